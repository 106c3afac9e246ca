"""``autodata-generate``: the Hydra entry point of the inner loop.

Examples::

    autodata-generate                                     # cs_papers, embedded model
    autodata-generate task=legal task.limit=3 inner.max_rounds=3
    autodata-generate method=cot_self_instruct hydra.run.dir=runs/cot
    autodata-generate harness=/path/to/exported_harness llm=openai

Exit codes: 0 every document finished; 1 a config or usage error; 3 some documents ended in
error (the summary gives the count and the command that redoes them); 130 SIGINT; 143 SIGTERM
(see :mod:`inner.entrypoint`).
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from inner.config import GenerateConfig, register_configs
from inner.entrypoint import EXIT_DOCUMENTS_IN_ERROR, EXIT_OK, check_run_dir_writable, cli_guard, run_async, to_config
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
        (
            "LLM call failures this run",
            ", ".join(f"{k} {v}" for k, v in sorted((stats.get("failures_by_kind") or {}).items())) or "0",
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
    if any(run_dir.glob("calls-worker*.jsonl")):  # executor=ray: each actor's own call log
        t.add_row("output: calls of the Ray actors", str(run_dir / "calls-worker*.jsonl"))
    return t


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="generate")
def _main(dcfg: DictConfig) -> None:
    from inner.engine.progress import RichProgress
    from inner.engine.run import run_generate

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with cli_guard(f"finished work is on disk in {run_dir}; to resume, run: {rerun_command(run_dir)}"):
        cfg = to_config(dcfg, GenerateConfig)

        def observer(**kw: Any) -> RichProgress:
            return RichProgress(enabled=cfg.progress and sys.stderr.isatty(), **kw)

        stats = run_async(run_generate(cfg, run_dir, observer_factory=observer))
    Console().print(summary_table(stats, run_dir))
    code = exit_code(stats)
    if code != EXIT_OK:
        log.error("%s", incomplete_message(stats, run_dir, backend=cfg.llm.backend.kind))
        sys.exit(code)


def exit_code(stats: dict[str, Any]) -> int:
    """0 when no document ended in error, else 3 (``EXIT_DOCUMENTS_IN_ERROR``)."""
    return EXIT_DOCUMENTS_IN_ERROR if stats.get("errored") else EXIT_OK


def rerun_command(run_dir: Path) -> str:
    """The command line of this process, pinned to ``run_dir`` (a rerun into the same run
    directory skips finished documents and redoes the rest)."""
    args = [a for a in sys.argv[1:] if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return shlex.join([Path(sys.argv[0]).name, *args, f"hydra.run.dir={run_dir}"])


def incomplete_message(stats: dict[str, Any], run_dir: Path, *, backend: str) -> str:
    """Why the run is incomplete, where to look (the logs this backend writes), and the exact
    command that redoes the documents in error."""
    n, total = stats["errored"], stats["documents"]
    kinds = stats.get("failures_by_kind") or {}
    what = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "see trajectories/*.json"
    calls = "calls-worker*.jsonl" if any(run_dir.glob("calls-worker*.jsonl")) else "calls.jsonl"  # executor=ray
    logs = [f"{run_dir / calls} (failed calls, field 'error')", f"{run_dir / 'trajectories'}/*.json"]
    if backend in ("local", "vllm") and (run_dir / "llm_server.log").exists():
        logs.append(str(run_dir / "llm_server.log"))
    head = "every document ended in error" if n == total else f"{n} of {total} documents ended in error"
    return (
        f"{head} (LLM call failures: {what}); see {', '.join(logs)}. "
        f"A rerun redoes exactly those documents: {rerun_command(run_dir)}"
    )


def main() -> None:
    """Console-script entry point."""
    check_run_dir_writable()  # before Hydra writes into it
    _main()
