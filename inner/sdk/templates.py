"""Prompt files: Markdown with a system part and a user part, ``$name`` placeholders.

A prompt file holds the system message, then a line ``=== USER ===``, then the user message.
Placeholders use :class:`string.Template` syntax (``$document``, ``${question}``) so that JSON
braces and LaTeX in prompts need no escaping; a literal dollar sign is written ``$$``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from string import Template

from inner.sdk.errors import HarnessError

USER_MARK = "=== USER ==="


def _load(path: Path) -> tuple[Template, Template]:
    try:
        st = path.stat()
    except OSError as exc:
        raise HarnessError(f"prompt file {path} cannot be read: {exc}") from exc
    return _parse(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _parse(path: Path, mtime_ns: int, size: int) -> tuple[Template, Template]:
    """Parsed prompt, cached per (path, mtime, size) so an edited file is read again."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HarnessError(f"prompt file {path} cannot be read: {exc}") from exc
    if USER_MARK not in text:
        raise HarnessError(f"prompt file {path} lacks the line {USER_MARK!r} between system and user parts")
    system, user = text.split(USER_MARK, 1)
    return Template(system.strip()), Template(user.strip())


def render(path: Path, **values: object) -> list[dict[str, str]]:
    """Chat messages ``[system, user]`` from a prompt file.

    Raises:
        HarnessError: the file is unreadable, lacks the user marker, or names a placeholder
            that was not given (the message names it).
    """
    system, user = _load(Path(path))
    try:
        return [
            {"role": "system", "content": system.substitute(values)},
            {"role": "user", "content": user.substitute(values)},
        ]
    except KeyError as exc:
        raise HarnessError(f"prompt file {path} uses placeholder ${exc.args[0]} which was not provided") from exc
    except ValueError as exc:
        raise HarnessError(f"prompt file {path}: {exc} (write a literal dollar sign as $$)") from exc
