"""A content-addressed on-disk cache of LLM responses.

The key is the sha256 of the canonical JSON of everything that determines a completion:
model, messages, sampling parameters, response format and the sample index (so the n
attempts of one solver prompt are n distinct entries). A rerun of a finished run therefore
makes zero LLM calls, and a killed run resumes by replaying what it had already paid for.
Entries are written atomically (temp file + rename), so a kill never leaves a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 hex digest of the canonical (sorted-keys, compact) JSON of ``payload``."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResponseCache:
    """Responses stored as ``<root>/<key[:2]>/<key>.json``.

    Args:
        root: cache directory; created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or ``None`` if absent or unreadable (a torn entry is a miss)."""
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` (JSON-serialisable) under ``key`` atomically."""
        atomic_write_text(self._path(key), json.dumps(entry, ensure_ascii=False))
