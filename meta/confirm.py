"""Confirmation on the sealed test split: the best admitted harness against the starting one.

When a meta run ends (and on demand: ``autodata-confirm run=DIR`` or ``python -m meta.confirm
run=DIR``) the archive's best harness and the starting harness are each evaluated
``meta.confirm_reps`` times (replicates 0..n-1) on the test split of ``splits.json``, the only
time a run reads it. Per document ``d_i = best pass fraction - start pass fraction``; the
result is the mean gain in points of pass rate (``100 * mean d_i``), the one-sided sign-flip
p-value of ``sum d_i`` and a 95% bootstrap interval over documents
(:func:`meta.admission.sign_flip_pvalue`, :func:`meta.admission.bootstrap_ci`). A document that
failed on infrastructure in a replicate is left out of that replicate; one with no run on
either side is left out of the comparison (listed in ``excluded_docs``).

It is written to ``confirmation.json`` (read by ``summary.json`` and by
``autodata-export-harness``'s MANIFEST.json). When the best is the starting harness the gain is
0 by definition and only the start's test pass rate is measured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inner.io import atomic_write_text
from meta.admission import Tallies, bootstrap_ci, sign_flip_pvalue

if TYPE_CHECKING:
    from meta.loop import MetaRun

log = logging.getLogger(__name__)


async def confirm(run: MetaRun) -> tuple[dict[str, Any] | None, str | None]:
    """Confirm the best harness of ``run`` against its starting harness (module docstring).

    Returns:
        ``(confirmation, None)`` (also written to ``confirmation.json``), or ``(None, why)``
        when there is nothing to confirm: ``meta.confirm_reps=0``, no test split, or the
        evaluations could not run.
    """
    from meta.loop import load_split

    reps = run.cfg.meta.confirm_reps
    names = json.loads((run.run_dir / "splits.json").read_text()).get("test") or []
    if reps == 0:
        return None, "not confirmed on the sealed test split: meta.confirm_reps=0"
    if not names:
        return None, "not confirmed on the sealed test split: the run has no test documents (split.test=0)"
    best, start = run.archive.best(), run.archive.entries[0]
    try:
        docs = load_split(run.cfg, names)
        sides = {"start": start} if best.commit == start.commit else {"start": start, "best": best}
        tallies: dict[str, Tallies] = {}
        errors = 0
        for side, entry in sides.items():
            harness_dir = run.materialize(entry.commit)
            outcomes = await asyncio.gather(
                *(run.evaluate(harness_dir, docs, "test", replicate=r) for r in range(reps))
            )
            t = Tallies()
            for o in outcomes:  # infrastructure errors: the document is left out of that replicate
                t.add_run({tr.doc_id: tr.status == "accepted" for tr in o.trajectories if tr.status != "error"})
                errors += o.errors
            tallies[side] = t
    except Exception as exc:  # an outage or a sandbox failure: the run's results stand without it
        log.exception("confirmation failed")
        return None, f"not confirmed on the sealed test split: the confirmation failed ({type(exc).__name__}: {exc})"
    doc_ids = [d.doc_id for d in docs]
    kept = [d for d in doc_ids if all(d in t and t[d].runs for t in tallies.values())]
    start_t = tallies["start"]
    result: dict[str, Any] = {
        "split": "test",
        "docs": doc_ids,
        "excluded_docs": [d for d in doc_ids if d not in kept],
        "replicates": reps,
        "infrastructure_errors": errors,
        "start_commit": start.commit,
        "start_harness_id": start.harness_id,
        "best_commit": best.commit,
        "best_harness_id": best.harness_id,
        "best_is_start": best.commit == start.commit,
        "start_pass_rate": start_t.pass_rate(kept) if kept else None,
    }
    if best.commit == start.commit:
        result |= {
            "best_pass_rate": result["start_pass_rate"], "gain_points": 0.0, "p_value": None, "ci95_points": None,
            "per_doc": {d: {"start": start_t[d].fraction} for d in kept},
            "note": "the best harness is the starting harness: the gain is 0 by definition",
        }  # fmt: skip
    elif kept:
        best_t = tallies["best"]
        diffs = [best_t[d].fraction - start_t[d].fraction for d in kept]
        lo, hi = bootstrap_ci(diffs, level=0.95, seed=run.cfg.meta.seed)
        result |= {
            "best_pass_rate": best_t.pass_rate(kept),
            "gain_points": 100 * sum(diffs) / len(diffs),
            "p_value": sign_flip_pvalue(diffs, seed=run.cfg.meta.seed),
            "ci95_points": [100 * lo, 100 * hi],
            "per_doc": {
                d: {"best": best_t[d].fraction, "start": start_t[d].fraction, "diff": x}
                for d, x in zip(kept, diffs, strict=True)
            },
        }
    else:
        return None, "not confirmed on the sealed test split: every test document failed on infrastructure"
    atomic_write_text(run.run_dir / "confirmation.json", json.dumps(result, indent=1) + "\n")
    return result, None


async def confirm_run(run_dir: Path, cfg: Any = None, *, base_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """On demand: confirm the best harness of the finished (or running) meta run ``run_dir``
    with its recorded config (``.hydra/config.yaml``, or ``cfg``); updates ``confirmation.json``
    and the ``confirmation`` key of ``summary.json``. Starts the backend unless ``base_urls``.

    Raises:
        ConfigError: not a meta run, or no recorded config.
    """
    import contextlib

    from inner.llm.backends import start_backend
    from inner.llm.cache import ResponseCache
    from inner.llm.client import LLMClient
    from inner.sdk.errors import ConfigError
    from meta.lineage import Lineage
    from meta.loop import MetaRun
    from meta.select import Archive

    run_dir = Path(run_dir)
    if not (run_dir / "archive.json").is_file() or not (run_dir / "splits.json").is_file():
        raise ConfigError(f"run={run_dir} is not an autodata-evolve run directory (no archive.json or splits.json)")
    if cfg is None:
        cfg = load_run_config(run_dir)
    archive = Archive(run_dir / "archive.json")
    if not archive.entries:
        raise ConfigError(f"run={run_dir} has an empty archive: the starting harness was never evaluated")
    cache = ResponseCache(Path(cfg.llm.cache_dir) if cfg.llm.cache_dir else run_dir / "llm_cache")
    backend: Any = (
        contextlib.nullcontext(base_urls) if base_urls is not None else start_backend(cfg.llm, log_dir=run_dir)
    )
    with backend as urls:
        client = LLMClient(cfg.llm, base_urls=urls, cache=cache, call_log=run_dir / "calls.jsonl")
        try:
            run = MetaRun(cfg, run_dir, client, Lineage(run_dir / "lineage"), archive, [], [])
            confirmation, note = await confirm(run)
        finally:
            await client.aclose()
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["confirmation"] = confirmation
        summary.pop("confirmation_note", None)
        if note:
            summary["confirmation_note"] = note
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return {"confirmation": confirmation, **({"confirmation_note": note} if note else {})}


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Any:
    """The :class:`meta.config.EvolveConfig` a run was made with (``.hydra/config.yaml``),
    with dotted ``overrides`` (``key=value``) applied.

    Raises:
        ConfigError: the run has no recorded config.
    """
    from omegaconf import OmegaConf

    from inner.sdk.errors import ConfigError
    from meta.config import EvolveConfig

    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path} is missing: the run's config is needed to confirm it (run it with autodata-evolve)")
    merged = OmegaConf.merge(OmegaConf.structured(EvolveConfig), OmegaConf.load(path))
    if overrides:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
    return OmegaConf.to_object(merged)


def main(argv: list[str] | None = None) -> None:
    """``autodata-confirm run=DIR [key=value ...]``: confirm a meta run's best harness on its
    sealed test split (overrides such as ``meta.confirm_reps=3`` or ``llm=...`` endpoint keys)."""
    from inner.sdk.errors import AutodataError, ConfigError

    args = list(sys.argv[1:] if argv is None else argv)
    runs = [a.split("=", 1)[1] for a in args if a.startswith("run=")]
    if len(runs) != 1:
        print("usage: autodata-confirm run=DIR [key=value ...]", file=sys.stderr)
        sys.exit(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_dir = Path(runs[0])
        if not (run_dir / "archive.json").is_file():
            raise ConfigError(f"run={run_dir} is not an autodata-evolve run directory (no archive.json)")
        cfg = load_run_config(run_dir, [a for a in args if not a.startswith("run=")])
        out = asyncio.run(confirm_run(run_dir, cfg))
    except (AutodataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
