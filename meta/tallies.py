"""Per-document tallies of every harness of a meta run, persisted in ``tallies.json``.

For each harness (by content hash) the store keeps the validation replicates that count
towards its tallies, one ``{doc_id: passed}`` per replicate index, and derives
:class:`meta.admission.Tallies` (passes and runs per document) from them. Keeping replicates by
index makes every update idempotent: two concurrent iterations that top up the same parent
replicate, or an iteration redone after a kill, never count it twice.

The replicates that decided a candidate's own admission are recorded under ``decision`` but
never counted (the winner's curse: an admitted candidate was selected for doing well on them).
Its counted replicates start at ``first_replicate`` (the first index its decision did not use),
so when it is later a parent its tallies come from fresh replicates.

``tallies.json``::

    {"version": 1,
     "harnesses": {"<content hash>": {
         "first_replicate": 2,
         "replicates": {"2": {"doc.txt": true, ...}, ...},      # counted
         "tallies": {"doc.txt": [passes, runs], ...},           # derived, for readers
         "decision": {"iteration": 4, "replicates": [0, 1], "tallies": {...}, "T": ..., ...}}}}

Writes are atomic (:func:`inner.io.atomic_write_text`); one writer (the asyncio loop of the meta
run) owns the file, and :meth:`TallyStore.lock` gives the per-harness lock that serializes a
parent's top-up evaluations.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from inner.io import atomic_write_text
from inner.sdk.errors import ConfigError
from meta.admission import Tallies

VERSION = 1


class TallyStore:
    """``tallies.json`` of one run directory (see the module docstring).

    Raises:
        ConfigError: the file exists but is unreadable.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.harnesses: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.harnesses = dict(data["harnesses"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{self.path} is unreadable ({type(exc).__name__}: {exc}); restore it or choose a new hydra.run.dir"
                ) from exc

    def _entry(self, content: str) -> dict[str, Any]:
        return self.harnesses.setdefault(content, {"first_replicate": 0, "replicates": {}, "tallies": {}})

    def lock(self, content: str) -> asyncio.Lock:
        """The per-harness lock (a parent's top-up evaluations run one at a time)."""
        return self._locks.setdefault(content, asyncio.Lock())

    def first_replicate(self, content: str) -> int:
        """The first replicate index that counts towards the harness's tallies."""
        return int(self.harnesses.get(content, {}).get("first_replicate", 0))

    def set_first_replicate(self, content: str, first: int) -> None:
        """Count only replicates ``>= first`` for harness ``content`` (the ones before decided its
        own admission: kept out of its tallies against the winner's curse)."""
        self._entry(content)["first_replicate"] = int(first)

    def replicate(self, content: str, index: int) -> dict[str, bool] | None:
        """The counted outcomes of replicate ``index``, or ``None``."""
        return self.harnesses.get(content, {}).get("replicates", {}).get(str(index))

    def counted(self, content: str) -> list[int]:
        """Replicate indices counted in the harness's tallies, ascending."""
        return sorted(int(k) for k in self.harnesses.get(content, {}).get("replicates", {}))

    def tallies(self, content: str) -> Tallies:
        """The harness's tallies over its counted replicates (empty if none)."""
        t = Tallies()
        for k in self.counted(content):
            t.add_run(self.harnesses[content]["replicates"][str(k)])
        return t

    def add_replicate(self, content: str, index: int, outcomes: dict[str, bool]) -> bool:
        """Count replicate ``index`` (``{doc_id: passed}``); ``False`` if it was already counted."""
        entry = self._entry(content)
        if str(index) in entry["replicates"]:
            return False
        entry["replicates"][str(index)] = {d: bool(v) for d, v in outcomes.items()}
        entry["tallies"] = self.tallies(content).to_json()
        return True

    def record_decision(self, content: str, decision: dict[str, Any]) -> None:
        """Record the evidence of the harness's admission decision (never counted)."""
        self._entry(content)["decision"] = decision

    def save(self) -> None:
        """Write ``tallies.json`` atomically."""
        atomic_write_text(self.path, json.dumps({"version": VERSION, "harnesses": self.harnesses}, indent=1) + "\n")
