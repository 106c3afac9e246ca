"""Lineage: a git repository of harness versions (GitPython).

``<run>/lineage/`` holds one commit per harness: the root commit is the starting harness, and
every candidate is a commit whose parent is the commit it was mutated from. Refs:

- ``refs/heads/main``                   the root (starting harness)
- ``refs/heads/candidates/iter-NNNN``   the candidate of iteration N (admitted or not)
- ``refs/tags/admitted/iter-NNNN``      admitted candidates

The commit message carries the iteration, the parent id, the validation scores and a one-line
summary of the analysis, so ``git log --graph --all`` and ``git diff <parent> <candidate>``
tell the story without the tool. Commits are built from a directory with a private index file
(``GIT_INDEX_FILE``), so concurrent iterations never share a work tree or index.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

import git

AUTHOR = {"GIT_AUTHOR_NAME": "autodata", "GIT_AUTHOR_EMAIL": "autodata@localhost"}
COMMITTER = {"GIT_COMMITTER_NAME": "autodata", "GIT_COMMITTER_EMAIL": "autodata@localhost"}


def candidate_ref(iteration: int) -> str:
    """``candidates/iter-NNNN``: the branch of iteration ``iteration``'s candidate."""
    return f"candidates/iter-{iteration:04d}"


def admitted_tag(iteration: int) -> str:
    """``admitted/iter-NNNN``: the tag of an admitted candidate."""
    return f"admitted/iter-{iteration:04d}"


class Lineage:
    """The lineage repository of one meta run.

    Args:
        path: ``<run>/lineage``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if (self.path / ".git").is_dir():
            self.repo = git.Repo(self.path)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.repo = git.Repo.init(self.path, initial_branch="main")

    @property
    def root(self) -> str | None:
        """The root commit (the starting harness), or ``None`` before :meth:`init_root`."""
        try:
            return self.repo.commit("refs/heads/main").hexsha
        except (git.BadName, ValueError):
            return None

    def _commit_dir(self, src: Path, message: str, parents: list[str]) -> str:
        env = {**os.environ, **AUTHOR, **COMMITTER}
        with self._lock, tempfile.TemporaryDirectory() as tmp:
            env["GIT_INDEX_FILE"] = str(Path(tmp) / "index")
            g = self.repo.git
            g.execute(["git", f"--work-tree={src}", "add", "-A", "--", "."], env=env)
            tree = g.execute(["git", "write-tree"], env=env).strip()
            cmd = ["git", "commit-tree", tree, "-m", message]
            for p in parents:
                cmd += ["-p", p]
            return g.execute(cmd, env=env).strip()

    def init_root(self, src: Path, *, message: str) -> str:
        """Commit the starting harness as the root on ``main`` (idempotent: returns the
        existing root if there is one) and check it out in the lineage work tree."""
        if self.root:
            return self.root
        sha = self._commit_dir(src, message, [])
        self.repo.git.update_ref("refs/heads/main", sha)
        self.repo.git.checkout("-f", "main")
        return sha

    def add_candidate(self, src: Path, *, parent: str, iteration: int, message: str) -> str:
        """Commit ``src`` as iteration ``iteration``'s candidate with parent ``parent`` and
        point ``candidates/iter-NNNN`` at it (replacing a half-made one)."""
        sha = self._commit_dir(src, message, [parent])
        self.repo.git.update_ref(f"refs/heads/{candidate_ref(iteration)}", sha)
        return sha

    def admit(self, sha: str, iteration: int) -> None:
        """Tag an admitted candidate ``admitted/iter-NNNN``."""
        self.repo.git.tag("-f", admitted_tag(iteration), sha)

    def discard_iteration(self, iteration: int) -> None:
        """Remove the refs of a half-made iteration (killed before its history line)."""
        for ref in (
            f"refs/heads/{candidate_ref(iteration)}",
            f"refs/tags/{admitted_tag(iteration)}",
        ):
            with contextlib.suppress(git.GitCommandError):  # the ref was never made
                self.repo.git.update_ref("-d", ref)

    def iteration_refs(self) -> dict[int, str]:
        """``{iteration: commit}`` for every candidate branch."""
        out = {}
        for head in self.repo.heads:
            if head.name.startswith("candidates/iter-"):
                out[int(head.name.rsplit("-", 1)[1])] = head.commit.hexsha
        return out

    def materialize(self, sha: str, dest: Path) -> Path:
        """Write the files of commit ``sha`` into ``dest`` (created; must not exist yet, or it
        is reused as is when complete)."""
        dest = Path(dest)
        if (dest / ".complete").is_file():
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        buf = io.BytesIO()
        self.repo.archive(buf, treeish=sha, format="tar")
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(sha)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        return dest

    def files(self, sha: str) -> dict[str, str]:
        """``{relative path: text}`` of the text files of commit ``sha``."""
        out = {}
        for blob in self.repo.commit(sha).tree.traverse():
            if blob.type == "blob":
                try:
                    out[blob.path] = blob.data_stream.read().decode("utf-8")
                except UnicodeDecodeError:
                    continue
        return out

    def diff(self, parent: str, child: str) -> str:
        """``git diff parent child``."""
        return self.repo.git.diff(parent, child)

    def diff_stat(self, parent: str, child: str) -> str:
        """``git diff --shortstat`` plus the changed file names, one line."""
        names = self.repo.git.diff("--name-only", parent, child).split()
        stat = self.repo.git.diff("--shortstat", parent, child).strip()
        return f"{stat} [{', '.join(names)}]" if names else "no change"

    def parent_chain(self, sha: str) -> list[str]:
        """``[sha, parent, grandparent, ..., root]``."""
        chain = [sha]
        c = self.repo.commit(sha)
        while c.parents:
            c = c.parents[0]
            chain.append(c.hexsha)
        return chain
