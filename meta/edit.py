"""Edits: the implementer's SEARCH/REPLACE blocks, parsed, checked and applied.

Format (several blocks and several files allowed)::

    FILE: prompts/challenger.md
    <<<<<<< SEARCH
    lines to find
    =======
    lines to put instead
    >>>>>>> REPLACE

and, as a fallback, a whole-file rewrite::

    FILE: harness.py
    <<<<<<< WHOLE
    the complete new file
    >>>>>>> WHOLE

Paths are relative to the harness directory. A path that is absolute, contains ``..`` or
otherwise resolves outside the harness directory rejects the whole edit before anything is
evaluated. A SEARCH text is matched exactly first, then line by line ignoring surrounding
whitespace, then by the most similar window of lines (difflib ratio >= 0.9); when none
applies the edit fails with the best similarity found.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from string import Template
from typing import Literal

from pydantic import BaseModel, conlist, create_model

from inner.sdk.templates import USER_MARK

FUZZY_MIN_RATIO = 0.9
#: edits per structured (JSON) implementer reply
MAX_JSON_EDITS = 6

_BLOCK = re.compile(
    r"FILE:\s*(?P<path>[^\n]+?)\s*\n(?:```[^\n]*\n)?"
    r"<<<<<<< (?P<kind>SEARCH|WHOLE)\n(?P<body>.*?)\n?>>>>>>> (?:REPLACE|WHOLE)",
    re.DOTALL,
)


class EditError(Exception):
    """An edit cannot be applied; ``kind`` is ``outside`` (path outside the harness), ``scope``
    (a file outside ``meta.editable``), ``parse`` or ``nomatch``."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Edit:
    """One block: ``search is None`` means a whole-file rewrite with ``replace``."""

    path: str
    search: str | None
    replace: str


def edits_to_blocks(edits: list[Edit]) -> str:
    """The block format of ``edits`` (inverse of :func:`parse_edits`)."""
    out = []
    for e in edits:
        if e.search is None:
            out.append(f"FILE: {e.path}\n<<<<<<< WHOLE\n{e.replace.rstrip(chr(10))}\n>>>>>>> WHOLE\n")
        else:
            out.append(f"FILE: {e.path}\n<<<<<<< SEARCH\n{e.search}\n=======\n{e.replace}\n>>>>>>> REPLACE\n")
    return "\n".join(out)


@functools.lru_cache(maxsize=64)
def edit_plan_model(files: tuple[str, ...]) -> type[BaseModel]:
    """Pydantic model of structured edits over ``files``: ``{"edits": [{"file", "search",
    "replace"}]}`` with 1 to :data:`MAX_JSON_EDITS` edits and ``file`` restricted to the harness's files (an empty
    ``search`` means a whole-file rewrite)."""
    item = create_model(
        "FileEdit",
        file=(Literal[files], ...),  # type: ignore[valid-type]
        search=(str, ""),
        replace=(str, ...),
    )
    return create_model("EditPlan", edits=(conlist(item, min_length=1, max_length=MAX_JSON_EDITS), ...))


def parse_edits(text: str) -> list[Edit]:
    """All edit blocks in the implementer's reply.

    Raises:
        EditError(kind="parse"): no block found, or a SEARCH block without ``=======``.
    """
    edits = []
    for m in _BLOCK.finditer(text):
        path = m.group("path").strip().strip("`\"'")
        body = m.group("body")
        if m.group("kind") == "WHOLE":
            edits.append(Edit(path, None, body + ("\n" if not body.endswith("\n") else "")))
            continue
        if "\n=======\n" not in f"\n{body}\n":
            raise EditError(f"SEARCH block for {path} has no ======= separator", kind="parse")
        search, _, replace = f"\n{body}\n".partition("\n=======\n")
        edits.append(Edit(path, search[1:], replace[:-1] if replace.endswith("\n") else replace))
    if not edits:
        raise EditError(
            "the implementer's reply contains no FILE: ... SEARCH/REPLACE or WHOLE block",
            kind="parse",
        )
    return edits


def check_paths(edits: list[Edit], root: Path) -> None:
    """Reject any edit whose path leaves ``root``.

    Raises:
        EditError(kind="outside"): names the offending path.
    """
    root = root.resolve()
    for e in edits:
        p = PurePosixPath(e.path)
        target = (root / e.path).resolve()
        if p.is_absolute() or ".." in p.parts or not target.is_relative_to(root) or target == root:
            raise EditError(f"edit outside the harness directory rejected: {e.path!r}", kind="outside")
        if any(part.startswith(".") for part in p.parts):
            raise EditError(f"edit of a hidden path rejected: {e.path!r}", kind="outside")


def is_editable(path: str, patterns: Sequence[str]) -> bool:
    """Whether the harness-relative ``path`` matches one of the ``fnmatch`` ``patterns``
    (``*`` also crosses ``/``: ``"*"`` is every file, ``"prompts/*"`` every prompt)."""
    return any(fnmatch.fnmatchcase(path, pat) for pat in patterns)


def check_editable(edits: list[Edit], patterns: Sequence[str]) -> None:
    """Reject any edit of a file outside the mutation scope (``meta.editable``).

    Raises:
        EditError(kind="scope"): names the file and the patterns.
    """
    for e in edits:
        if not is_editable(str(PurePosixPath(e.path)), patterns):
            raise EditError(f"edit of {e.path!r} rejected: only files matching {list(patterns)} may be edited "
                            "(meta.editable)", kind="scope")  # fmt: skip


def _apply_one(text: str, search: str, replace: str, path: str) -> str:
    if search and search in text:
        return text.replace(search, replace, 1)
    lines = text.splitlines(keepends=True)
    s_lines = [ln.strip() for ln in search.strip("\n").splitlines()]
    n = len(s_lines)
    if n == 0:
        raise EditError(f"empty SEARCH block for {path}", kind="nomatch")
    stripped = [ln.strip() for ln in lines]
    for i in range(len(lines) - n + 1):
        if stripped[i : i + n] == s_lines:
            return "".join(lines[:i]) + _with_newline(replace) + "".join(lines[i + n :])
    best, best_i = 0.0, -1
    target = "\n".join(s_lines)
    for i in range(len(lines) - n + 1):
        ratio = difflib.SequenceMatcher(None, "\n".join(stripped[i : i + n]), target, autojunk=False).ratio()
        if ratio > best:
            best, best_i = ratio, i
    if best >= FUZZY_MIN_RATIO:
        return "".join(lines[:best_i]) + _with_newline(replace) + "".join(lines[best_i + n :])
    raise EditError(
        f"SEARCH block did not match {path} (best similarity {best:.2f} < {FUZZY_MIN_RATIO})",
        kind="nomatch",
    )


def _with_newline(s: str) -> str:
    return s if s.endswith("\n") or not s else s + "\n"


def apply_edits(edits: list[Edit], root: Path) -> list[str]:
    """Apply ``edits`` to the files under ``root`` in place; returns the changed paths.

    A SEARCH block on a missing file fails; a WHOLE block creates or replaces the file.

    Raises:
        EditError: a path outside ``root`` (checked before any change) or a block that does not
            apply (files may then be partly edited: apply to a scratch copy).
    """
    check_paths(edits, root)
    changed = []
    for e in edits:
        target = root / e.path
        if e.search is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(e.replace, encoding="utf-8")
        else:
            if not target.is_file():
                raise EditError(f"SEARCH block names a file that does not exist: {e.path!r}", kind="nomatch")
            target.write_text(
                _apply_one(target.read_text(encoding="utf-8"), e.search, e.replace, e.path),
                encoding="utf-8",
            )
        if e.path not in changed:
            changed.append(e.path)
    return changed


def check_prompt_files(root: Path) -> str | None:
    """Check every ``prompts/*.md`` of the harness at ``root`` the way
    :func:`inner.sdk.templates.render` will read it: the ``=== USER ===`` line between the system
    and the user part, valid ``$placeholders`` (a literal dollar is ``$$``), and, for a file
    the code names, every placeholder named somewhere in the harness's Python code (the values
    it passes).

    Returns:
        ``None`` if every prompt file is usable, else the problems, one per file.
    """
    code = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.rglob("*.py")))
    problems = []
    for path in sorted((root / "prompts").glob("*.md")) if (root / "prompts").is_dir() else []:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if USER_MARK not in text:
            problems.append(f"{rel} lacks the line {USER_MARK!r} between the system and the user part")
            continue
        template = Template(text)
        if not template.is_valid():
            problems.append(f"{rel} has an invalid placeholder (write a literal dollar sign as $$)")
            continue
        if path.name not in code:  # a prompt file no code renders cannot break a run
            continue
        unknown = [n for n in template.get_identifiers() if not re.search(rf"\b{re.escape(n)}\b", code)]
        if unknown:
            problems.append(f"{rel} uses ${', $'.join(unknown)}, which no harness code passes")
    return "; ".join(problems) or None
