"""Harness directories read as data: never followed out of themselves, bounded before any read.

A harness directory is what users share, export and mutate, so the parent treats it as untrusted
input. Before sandboxing, the parent hashes it (the harness id), snapshots it (every run executes
a copy) and copies it (evolve's start harness and every candidate). Following a symbolic link
there would read the link's target with the parent's rights: ``env -> /proc/self/environ`` sent the
parent's API key to the challenger, into ``dataset.jsonl`` and into the lineage; ``root -> /``
made evolve copy the host's file system (the independent tester's findings, issue 15).

Rules (:func:`scan_harness`):

- regular files and directories are data;
- a symbolic link whose target, resolved lexically from the link's own directory, stays inside
  the harness directory is kept as a link (it resolves the same way inside the sandbox, where the
  harness is mounted at ``/harness``); its target is never read through the link;
- a link that leaves the directory (absolute, or ``..`` past the root), a dangling link, a link
  cycle, a device, a FIFO or a socket is refused with :class:`~inner.sdk.errors.HarnessError`
  naming the path;
- caps on the number of files and on their total size (:data:`MAX_FILES`, :data:`MAX_BYTES`),
  checked from ``lstat`` before any byte is read into memory;
- ``__pycache__``, dot-files and an export's ``MANIFEST.json`` are not part of a harness.

Files are opened with ``O_NOFOLLOW`` and checked again with ``fstat``, so a file swapped for a
link between the scan and the read is refused, not followed.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from inner.sdk.errors import HarnessError

#: most files a harness directory may hold (a real harness has a handful)
MAX_FILES = 2_000
#: most bytes its files may hold in total (64 MiB; the shipped harnesses hold under 100 KiB)
MAX_BYTES = 64 << 20
#: names that are not part of a harness: an export's manifest (describes the harness, is not it)
IGNORED_NAMES = frozenset({"MANIFEST.json"})


@dataclass(frozen=True)
class HarnessEntry:
    """One member of a harness directory.

    Attributes:
        rel: path relative to the harness directory, POSIX separators.
        kind: ``"file"`` or ``"link"`` (a link that stays inside the directory).
        size: bytes of a file (0 for a link).
        target: a link's target as written (``""`` for a file).
    """

    rel: str
    kind: str
    size: int = 0
    target: str = ""


def _ignored(rel_parts: tuple[str, ...]) -> bool:
    return any(p == "__pycache__" or p.startswith(".") for p in rel_parts) or rel_parts[-1] in IGNORED_NAMES


def _link_stays_inside(root: Path, rel: str, target: str) -> bool:
    """Does the link at ``rel`` (relative to ``root``) resolve, link by link and lexically, to a
    file or directory inside ``root``? Cycles and dangling links are refused."""
    current, seen = rel, set()
    while True:
        if current in seen or len(seen) > 40:
            return False
        seen.add(current)
        target = os.readlink(root / current)
        if os.path.isabs(target):
            return False
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        if joined == ".." or joined.startswith("../") or joined == ".":
            return joined == "."  # the directory itself is inside; anything above is not
        # every intermediate component must be a real directory inside the root (no link hops)
        parts = joined.split("/")
        probe = root
        for part in parts[:-1]:
            probe = probe / part
            try:
                st = os.lstat(probe)
            except OSError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                return False
        try:
            st = os.lstat(root / joined)
        except OSError:
            return False  # dangling
        if stat.S_ISLNK(st.st_mode):
            current = joined
            continue
        return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)


def scan_harness(path: Path, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> list[HarnessEntry]:
    """The members of the harness directory ``path``, sorted by relative path, without reading
    any file and without following any link.

    Args:
        path: the harness directory (itself may be reached through a link: that is the user's
            choice of path, resolved by the caller).
        max_files: most members (files and links).
        max_bytes: most bytes over all files.

    Raises:
        HarnessError: a link leaving the directory, a dangling or cyclic link, a device, FIFO or
            socket (the path is named), or a cap exceeded (the caps are named).
    """
    root = Path(path)
    if not root.is_dir():
        raise HarnessError(f"harness directory {root} does not exist or is not a directory")
    out: list[HarnessEntry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).parts
        keep_dirs = []
        for name in sorted(dirnames):
            rel_parts = (*rel_base, name)
            if _ignored(rel_parts):
                continue
            full = base / name
            if full.is_symlink():  # os.walk lists links to directories among dirnames
                filenames.append(name)
            else:
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel_parts = (*rel_base, name)
            if _ignored(rel_parts):
                continue
            full = base / name
            rel = "/".join(rel_parts)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                if not _link_stays_inside(root, rel, target):
                    raise HarnessError(
                        f"harness {root}: {rel} is a symbolic link to {target!r}, which leaves the harness "
                        "directory (or dangles, or loops); harness directories are data: replace the link "
                        "with the file itself"
                    )
                out.append(HarnessEntry(rel, "link", 0, target))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                out.append(HarnessEntry(rel, "file", st.st_size))
            else:
                kind = (
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
                )
                raise HarnessError(f"harness {root}: {rel} is {kind}; a harness directory holds files only")
            if len(out) > max_files:
                raise HarnessError(
                    f"harness {root} holds more than {max_files} files (inner.harness_max_files); "
                    "a harness is code and prompts: remove data files or raise the cap"
                )
            if total > max_bytes:
                raise HarnessError(
                    f"harness {root} holds more than {max_bytes >> 20} MiB (inner.harness_max_mb; at {rel}); "
                    "a harness is code and prompts: remove large files or raise the cap"
                )
    return sorted(out, key=lambda e: e.rel)


def read_member(root: Path, entry: HarnessEntry) -> bytes:
    """The bytes of a ``file`` member, opened without following links.

    Raises:
        HarnessError: the member changed kind or size since the scan (swapped for a link).
    """
    try:
        fd = os.open(root / entry.rel, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise HarnessError(f"harness {root}: cannot read {entry.rel} without following a link ({exc})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            raise HarnessError(f"harness {root}: {entry.rel} changed while it was being read")
        return fh.read(entry.size + 1)[: entry.size]


def harness_content_hash(path: Path, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> str:
    """12 hex of a sha256 over every member's relative path and bytes (a link: its target as
    written), in :func:`scan_harness` order: the harness's identity, whatever its directory is
    called.

    Raises:
        HarnessError: as :func:`scan_harness`.
    """
    root = Path(path)
    h = hashlib.sha256()
    for entry in scan_harness(root, max_files=max_files, max_bytes=max_bytes):
        h.update(entry.rel.encode())
        h.update(b"\0")
        if entry.kind == "link":
            h.update(b"link:" + entry.target.encode())
        else:
            h.update(read_member(root, entry))
        h.update(b"\0")
    return h.hexdigest()[:12]


def copy_harness(src: Path, dest: Path, *, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> Path:
    """Copy the harness directory ``src`` into ``dest`` (created; files written fresh, links that
    stay inside recreated as links) and return ``dest``. Nothing outside ``src`` is read.

    Raises:
        HarnessError: as :func:`scan_harness`.
        OSError: ``dest`` cannot be written.
    """
    src, dest = Path(src), Path(dest)
    entries = scan_harness(src, max_files=max_files, max_bytes=max_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = dest / entry.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "link":
            target.unlink(missing_ok=True)
            os.symlink(entry.target, target)
        else:
            target.write_bytes(read_member(src, entry))
    return dest
