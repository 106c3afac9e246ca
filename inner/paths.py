"""Where the project's own files live, and how relative paths in configs are resolved."""

from __future__ import annotations

from pathlib import Path

#: The repository root (``inner/`` sits directly under it; the project installs editable).
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """Resolve a config path: absolute as is; relative to the working directory if it exists
    there, otherwise relative to the project root (so ``experiments/corpora/cs`` works from
    any directory)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (PROJECT_ROOT / p).resolve()
