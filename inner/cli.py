"""``autodata-generate``: the Hydra entry point of the inner loop.

Examples::

    autodata-generate                                     # cs_papers, embedded model
    autodata-generate task=legal task.limit=3 inner.max_rounds=3
    autodata-generate method=cot_self_instruct hydra.run.dir=runs/cot
    autodata-generate harness=/path/to/exported_harness llm=openai
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from inner.config import GenerateConfig, register_configs
from inner.entrypoint import cli_guard, to_config
from inner.paths import PROJECT_ROOT

log = logging.getLogger("autodata")

register_configs()


def summary_table(stats: dict[str, Any], run_dir: Path) -> Table:
    """The end-of-run summary: outcome, averages, calls and tokens per role, output paths."""
    t = Table(title=f"Autodata — {stats['method']} ({stats['harness_id']})", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    fin, acc = stats["final"], stats["accepted_examples"]

    def f(x: Any) -> str:
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    rows = [
        (
            "documents (finished / errored)",
            f"{stats['documents']} ({stats['finished']} / {stats['errored']})",
        ),
        ("accepted", f(stats["accepted"])),
        ("pass rate", f(stats["pass_rate"])),
        ("mean rounds to accept", f(stats["mean_rounds_to_accept"])),
        (
            "final weak / strong / gap",
            f"{f(fin['weak_avg'])} / {f(fin['strong_avg'])} / {f(fin['gap'])}",
        ),
        (
            "accepted weak / strong / gap",
            f"{f(acc['weak_avg'])} / {f(acc['strong_avg'])} / {f(acc['gap'])}",
        ),
        ("failure modes", ", ".join(f"{k} {v}" for k, v in stats["failure_modes"].items()) or "-"),
        ("wall time (s)", f(stats["wall_s"])),
        (
            "LLM calls this run",
            f"{sum(u['calls'] for u in stats['this_invocation'].values())} sent, "
            f"{sum(u['cached_calls'] for u in stats['this_invocation'].values())} from the cache",
        ),
    ]
    for k, v in rows:
        t.add_row(k, v)
    for role, u in stats["this_invocation"].items():
        t.add_row(
            f"calls: {role}",
            f"{u['calls']} sent + {u['cached_calls']} cached, {u['prompt_tokens']}+{u['completion_tokens']} tok",
        )
    for name in ("dataset.jsonl", "trajectories", "stats.json", "config.yaml", "calls.jsonl"):
        t.add_row(f"output: {name}", str(run_dir / name))
    return t


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="generate")
def _main(dcfg: DictConfig) -> None:
    from inner.progress import RichProgress
    from inner.run import run_generate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with cli_guard(f"finished work is on disk in {run_dir}; rerun the same command to resume"):
        cfg = to_config(dcfg, GenerateConfig)

        def observer(**kw: Any) -> RichProgress:
            return RichProgress(enabled=cfg.progress and sys.stderr.isatty(), **kw)

        stats = asyncio.run(run_generate(cfg, run_dir, observer_factory=observer))
    Console().print(summary_table(stats, run_dir))
    if stats["documents"] and stats["errored"] == stats["documents"]:
        log.error("every document failed; see trajectories/*.json and %s", run_dir / "llm_server.log")
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    _main()
