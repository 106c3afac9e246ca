"""Export a harness from a meta run as a standalone directory for production generation.

``autodata-export-harness RUN_DIR [--harness best|COMMIT] [--out DIR]`` writes the harness
files of a lineage commit (default: the archive's best validation pass rate) plus
``MANIFEST.json`` (lineage commit, harness id, validation pass rate, parent chain with scores,
the confirmation on the sealed test split (``confirmation``: ``null`` plus ``confirmation_note``
when this harness was not confirmed), source run). ``autodata-generate harness=DIR`` then uses it directly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inner.engine.harness import harness_id
from inner.io import atomic_write_text, fsync_dir, read_jsonl
from inner.sdk.errors import AutodataError, ConfigError
from meta.lineage import Lineage
from meta.select import Archive


def export_harness(run_dir: Path, out: Path | None = None, *, harness: str = "best") -> tuple[Path, dict[str, Any]]:
    """Write the chosen harness to ``out``; returns the manifest.

    Args:
        run_dir: a meta run directory (with ``lineage/`` and ``archive.json``).
        out: target directory (must not exist or be empty); default ``<run>/export/<commit>``.
        harness: ``best`` or a commit sha (prefix) of the lineage.

    Returns:
        ``(out, manifest)``.

    Raises:
        ConfigError: not a meta run, unknown commit, or a non-empty ``out``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "lineage" / ".git").is_dir() or not (run_dir / "archive.json").is_file():
        raise ConfigError(f"run={run_dir} is not an autodata-evolve run directory (no lineage/ or archive.json)")
    lineage, archive = Lineage(run_dir / "lineage"), Archive(run_dir / "archive.json")
    if not archive.entries:
        raise ConfigError(f"run={run_dir} has an empty archive: the starting harness was never evaluated")
    if harness == "best":
        entry = archive.best()
        commit = entry.commit
    else:
        try:
            commit = lineage.repo.commit(harness).hexsha
        except Exception as exc:
            raise ConfigError(f"harness={harness!r} is not a commit of {run_dir / 'lineage'}") from exc
        entry = archive.get(commit)
    out = Path(out) if out is not None else run_dir / "export" / commit[:12]
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"out={out} exists and is not empty: choose a new directory")
    history = {h.get("candidate"): h for h in _history(run_dir)}
    scores = {e.commit: e.val_pass_rate for e in archive.entries}
    chain = [
        {"commit": c, "val_pass_rate": scores.get(c, (history.get(c) or {}).get("candidate_val"))}
        for c in lineage.parent_chain(commit)
    ]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lineage.materialize(commit, tmp)
    (tmp / ".complete").unlink()
    manifest = {
        "lineage_commit": commit,
        "harness_id": f"{out.name}@{harness_id(tmp).split('@')[1]}",  # what autodata-generate records
        "admitted": entry is not None,
        "val_pass_rate": entry.val_pass_rate if entry else (history.get(commit) or {}).get("candidate_val"),
        "parent_chain": chain,
        **_confirmation(run_dir, commit),
        "source_run": str(run_dir.resolve()),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(tmp / "MANIFEST.json", json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # the export appears whole or not at all
    fsync_dir(out.parent)
    return out, manifest


def _confirmation(run_dir: Path, commit: str) -> dict[str, Any]:
    """``{"confirmation": ...}``: the run's confirmation on its sealed test split
    (``confirmation.json``, :mod:`meta.confirm`) when it confirmed this commit, else ``None``
    plus ``confirmation_note`` saying why."""
    path = run_dir / "confirmation.json"
    if not path.exists():
        note = (
            "not confirmed on the sealed test split: the run has no confirmation (autodata-confirm run=DIR makes one)"
        )
        return {"confirmation": None, "confirmation_note": note}
    conf = json.loads(path.read_text())
    if conf.get("best_commit") != commit:
        note = f"not confirmed on the sealed test split: the run confirmed {str(conf.get('best_commit'))[:12]}, not this harness"
        return {"confirmation": None, "confirmation_note": note}
    return {"confirmation": conf}


def _history(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "history.jsonl")


def main(argv: list[str] | None = None) -> None:
    """Console script ``autodata-export-harness``."""
    ap = argparse.ArgumentParser(prog="autodata-export-harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="meta run directory (autodata-evolve output)")
    ap.add_argument("--harness", default="best", help="'best' (default) or a lineage commit")
    ap.add_argument("--out", type=Path, default=None, help="target directory (default: RUN/export/<commit>)")
    args = ap.parse_args(argv)
    try:
        out, manifest = export_harness(args.run, args.out, harness=args.harness)
    except (AutodataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(manifest, indent=2))
    print(f"exported to {out}\nuse it with: autodata-generate harness={out}")
