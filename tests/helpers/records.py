"""Reading what a run wrote (JSON lines) and what the scripted server received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines record (``dataset.jsonl``, ``calls.jsonl``); a line that is
    not JSON fails the test (records are written whole or not at all)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def request_bodies(srv: Any, role: str) -> list[dict[str, Any]]:
    """The request bodies the scripted server received for ``role``, in order."""
    return [body for r, body in srv.requests if r == role]
