"""The archive of admitted harnesses and parent selection.

Selection strategies (``meta.selection``):

- ``boltzmann`` (default): P(parent) proportional to exp(score / T), T = ``meta.temperature``
  = 0.1 by default (the published Autodata setting). Scores are validation pass rates in [0, 1].
- ``greedy``: the best score (ties: the earliest admitted).
- ``uniform``: every admitted harness equally likely (ablation).

Selection is seeded per iteration (``random.Random(f"{seed}:{iteration}")``), so a resumed run
picks the same parent for the same iteration and archive.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from inner.io import atomic_write_text
from inner.sdk.errors import ConfigError

STRATEGIES = ("boltzmann", "greedy", "uniform")


@dataclass
class ArchiveEntry:
    """One admitted harness.

    Attributes:
        commit: lineage commit sha.
        harness_id: ``<name>@<content hash>``.
        iteration: the iteration that admitted it (0 = the starting harness).
        parent: parent commit (``None`` for the root).
        val_pass_rate: validation pass rate in [0, 1].
    """

    commit: str
    harness_id: str
    iteration: int
    parent: str | None
    val_pass_rate: float


class Archive:
    """The admitted harnesses, persisted as ``archive.json`` (atomic rewrite)."""

    def __init__(self, path: Path) -> None:
        """Load ``path`` if it exists.

        Raises:
            ConfigError: ``archive.json`` is torn or corrupt (the message names it; it is not
                touched).
        """
        self.path = Path(path)
        self.entries: list[ArchiveEntry] = []
        if self.path.exists():
            try:
                self.entries = [ArchiveEntry(**e) for e in json.loads(self.path.read_text(encoding="utf-8"))["entries"]]
            except (ValueError, KeyError, TypeError) as exc:  # torn, corrupt, or not an archive
                raise ConfigError(
                    f"{self.path} is torn or corrupt ({type(exc).__name__}: {exc}); it was left as it is. Restore it "
                    "(history.jsonl lists the admitted candidates, lineage/ tags them admitted/iter-*) or choose "
                    "a new hydra.run.dir"
                ) from exc

    def add(self, entry: ArchiveEntry) -> None:
        """Add an admitted harness (idempotent per commit) and rewrite ``archive.json`` atomically."""
        if any(e.commit == entry.commit for e in self.entries):
            return
        self.entries.append(entry)
        self.save()

    def save(self) -> None:
        """Rewrite ``archive.json`` atomically."""
        atomic_write_text(self.path, json.dumps({"entries": [asdict(e) for e in self.entries]}, indent=2) + "\n")

    def best(self) -> ArchiveEntry:
        """The entry with the highest validation pass rate (ties: the earliest)."""
        return max(self.entries, key=lambda e: (e.val_pass_rate, -e.iteration))

    def get(self, commit: str) -> ArchiveEntry | None:
        """The entry of ``commit`` (a full sha or a prefix), or ``None``."""
        return next((e for e in self.entries if e.commit == commit or e.commit.startswith(commit)), None)


def selection_probabilities(scores: list[float], *, strategy: str, temperature: float) -> list[float]:
    """Selection probability of each entry.

    Args:
        scores: validation pass rates in [0, 1], one per archive entry (non-empty).
        strategy: ``boltzmann``, ``greedy`` or ``uniform``.
        temperature: Boltzmann temperature T > 0.

    Raises:
        ConfigError: unknown strategy or T <= 0.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"meta.selection={strategy!r} is invalid: use one of {STRATEGIES}")
    n = len(scores)
    if strategy == "uniform":
        return [1.0 / n] * n
    if strategy == "greedy":
        best = max(range(n), key=lambda i: (scores[i], -i))
        return [1.0 if i == best else 0.0 for i in range(n)]
    if temperature <= 0:
        raise ConfigError(f"meta.temperature={temperature} is invalid: must be > 0")
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]  # shifted for stability
    total = sum(weights)
    return [w / total for w in weights]


def select_parent(archive: Archive, *, strategy: str, temperature: float, seed: int, iteration: int) -> ArchiveEntry:
    """Pick the parent of ``iteration`` from the archive (see the module docstring)."""
    probs = selection_probabilities(
        [e.val_pass_rate for e in archive.entries], strategy=strategy, temperature=temperature
    )
    rng = random.Random(f"{seed}:{iteration}")
    return rng.choices(archive.entries, weights=probs, k=1)[0]
