"""Read run directories from disk (generation runs and meta runs).

A *generation run* has ``trajectories/``, ``dataset.jsonl``, ``stats.json`` (written by
``autodata-generate``); a *meta run* has ``history.jsonl``, ``archive.json``, ``curve.jsonl``
and ``lineage/`` (``autodata-evolve``). Both are parsed with the project's own record schemas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inner.engine.records import Example, RunWriter, Trajectory
from inner.io import read_jsonl
from inner.sdk.errors import ConfigError


@dataclass
class GenerationRun:
    """One ``autodata-generate`` run (or one evaluation directory of a meta run)."""

    path: Path
    trajectories: list[Trajectory]
    examples: list[Example]
    stats: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method_label(self) -> str:
        """``CoT Self-Instruct`` or ``Agentic Self-Instruct (<harness id>)``."""
        method = self.stats.get("method") or (self.trajectories[0].method if self.trajectories else "?")
        if method == "cot_self_instruct":
            return "CoT Self-Instruct"
        return f"Agentic Self-Instruct ({self.stats.get('harness_id', '?')})"


@dataclass
class MetaRunRecords:
    """One ``autodata-evolve`` run."""

    path: Path
    history: list[dict[str, Any]]
    archive: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def student_gain(self) -> bool:
        """Whether the run's fitness is the student's gain (``meta.fitness=student_gain``,
        meta/student.py): its scores are then the trained student's public mean@k."""
        if self.summary.get("fitness"):
            return self.summary["fitness"] == "student_gain"
        return any("base_score" in c for c in self.curve if c.get("iteration") == 0)

    @property
    def score_label(self) -> str:
        """What the run's scores are, in words (axis labels, headings)."""
        from meta.student import SCORE_LABELS

        return SCORE_LABELS["student_gain" if self.student_gain else "pass_rate"]

    @property
    def baseline(self) -> float | None:
        root = [c for c in self.curve if c.get("iteration") == 0]
        if root:
            return root[0]["candidate_val"]
        return self.archive[0]["val_pass_rate"] if self.archive else None


def is_generation_run(path: Path) -> bool:
    """A directory with ``trajectories/`` (autodata-generate, or one meta evaluation)."""
    return (path / "trajectories").is_dir()


def is_meta_run(path: Path) -> bool:
    """A directory with ``history.jsonl`` or ``archive.json`` (autodata-evolve)."""
    return (path / "history.jsonl").exists() or (path / "archive.json").exists()


def load_generation_run(path: Path) -> GenerationRun:
    """Parse a generation run directory.

    Raises:
        ConfigError: ``path`` has no ``trajectories/``.
    """
    path = Path(path)
    if not is_generation_run(path):
        raise ConfigError(f"run={path} is not a generation run directory (no trajectories/)")
    writer = RunWriter(path, readonly=True)
    stats_path = path / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    return GenerationRun(path, writer.load_trajectories(), writer.load_examples(), stats)


def load_meta_run(path: Path) -> MetaRunRecords:
    """Parse a meta run directory.

    Raises:
        ConfigError: ``path`` has neither ``history.jsonl`` nor ``archive.json``.
    """
    path = Path(path)
    if not is_meta_run(path):
        raise ConfigError(f"run={path} is not an autodata-evolve run directory (no history.jsonl)")
    archive_path = path / "archive.json"
    archive = json.loads(archive_path.read_text())["entries"] if archive_path.exists() else []
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return MetaRunRecords(path, read_jsonl(path / "history.jsonl"), archive, read_jsonl(path / "curve.jsonl"), summary)
