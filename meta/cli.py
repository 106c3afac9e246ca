"""``autodata-evolve``: the Hydra entry point of the meta-optimization loop.

Examples::

    autodata-evolve +experiment=demo                          # model ladder, 2 iterations
    autodata-evolve meta.max_iterations=50 meta.in_flight=4 llm=vllm
    autodata-evolve -m meta.temperature=0.05,0.1,0.2 hydra/launcher=joblib   # a sweep

Exit codes: 0 a budget ended the run; 1 a config or usage error; 4 a circuit breaker stopped
it (``stop_reason`` in summary.json); 130 SIGINT; 143 SIGTERM (see :mod:`inner.entrypoint`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from inner.entrypoint import EXIT_CIRCUIT_BREAKER, EXIT_OK, check_run_dir_writable, cli_guard, run_async, to_config
from inner.paths import PROJECT_ROOT
from meta.admission import decision_text
from meta.config import EvolveConfig, register_configs
from meta.student import SCORE_LABELS, private_replay_text

log = logging.getLogger("autodata")
#: admission decisions listed in the end-of-run table (the rest are in history.jsonl)
DECISION_ROWS = 10

register_configs()


def summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    """The end-of-run table: stop reason, statuses, baseline and best validation pass rates,
    noise floor, the last admission decisions with T and p, the confirmation, calls and tokens
    per role, output paths."""
    # the fitness the archive holds: the validation pass rate, or under student_gain the
    # student's public score (meta/student.py)
    score = SCORE_LABELS[summary.get("fitness", "pass_rate")]
    t = Table(title="Autodata — meta-optimization")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("stop reason", str(summary["stop_reason"])),
        ("iterations", str(summary["iterations"])),
        ("statuses", ", ".join(f"{k} {v}" for k, v in summary["statuses"].items())),
        (f"baseline {score}", f"{summary['baseline_val_pass_rate']:.3f}"),
        (
            f"best {score}",
            f"{summary['best_val_pass_rate']:.3f} ({summary['best_commit'][:10]})",
        ),
        ("wall time (s)", str(summary["wall_s"])),
    ]
    floor, conf = summary.get("noise_floor"), summary.get("confirmation")
    if floor:
        std = "n/a" if floor.get("std") is None else f"{floor['std']:.3f}"
        rows.append(
            ("noise floor (start, val)", f"{floor['mean']:.3f} ± {std} over {floor['n_replicates']} replicates")
        )
    rows.extend(decision_rows(run_dir / "history.jsonl"))
    if conf and "private" in conf:  # student_gain: the private replay (meta/student.py)
        rows.append(("private replay (mean@k)", f"{private_replay_text(conf)} on {conf['items']} items"))
    elif conf and not conf.get("best_is_start"):
        lo, hi = conf["ci95_points"]
        rows.append(
            (
                "confirmed test gain",
                f"{conf['gain_points']:+.1f} pts (95% CI {lo:+.1f}..{hi:+.1f}, p={conf['p_value']:.3f})",
            )
        )
    elif conf:
        rows.append(("confirmed test gain", f"0 (best = start; test pass rate {conf['start_pass_rate']:.3f})"))
    else:
        rows.append(("confirmation", str(summary.get("confirmation_note", "none"))))
    for role, u in summary["this_invocation"].items():
        rows.append(
            (
                f"calls: {role}",
                f"{u['calls']} sent + {u['cached_calls']} cached, {u['prompt_tokens']}+{u['completion_tokens']} tok",
            )
        )
    for name in ("history.jsonl", "archive.json", "curve.jsonl", "lineage", "evals"):
        rows.append((f"output: {name}", str(run_dir / name)))
    for k, v in rows:
        t.add_row(k, v)
    return t


def decision_rows(history_path: Path, *, last: int = DECISION_ROWS) -> list[tuple[str, str]]:
    """Table rows of the ``last`` admission decisions in ``history.jsonl``, by iteration: the
    status and :func:`meta.admission.decision_text`, plus a row counting the earlier ones left
    out."""
    from meta.loop import load_history

    decided = sorted(
        ((h, text) for h in load_history(history_path) if (text := decision_text(h))), key=lambda d: d[0]["iteration"]
    )
    rows = []
    if len(decided) > last:
        rows.append(("decisions", f"{len(decided) - last} earlier ones in history.jsonl"))
    rows += [(f"decision: iteration {h['iteration']}", f"{h['status']}, {text}") for h, text in decided[-last:]]
    return rows


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="evolve")
def _main(dcfg: DictConfig) -> None:
    from meta.loop import run_evolve

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with cli_guard(f"finished iterations are in {run_dir}; rerun the same command to resume"):
        summary = run_async(run_evolve(to_config(dcfg, EvolveConfig), run_dir))
    Console().print(summary_table(summary, run_dir))
    print(f"lineage: git -C {run_dir / 'lineage'} log --graph --all --oneline")
    code = exit_code(summary)
    if code != EXIT_OK:
        log.error("stopped early: %s (see %s)", summary["stop_reason"], run_dir / "summary.json")
        sys.exit(code)


def exit_code(summary: dict[str, Any]) -> int:
    """4 (``EXIT_CIRCUIT_BREAKER``) when a circuit breaker stopped the run (``stop_reason``
    starts with "circuit breaker"), else 0."""
    return EXIT_CIRCUIT_BREAKER if str(summary.get("stop_reason", "")).startswith("circuit breaker") else EXIT_OK


def main() -> None:
    """Console-script entry point."""
    check_run_dir_writable()  # before Hydra writes into it
    _main()
