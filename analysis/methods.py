"""Side-by-side of methods on the same documents: CoT Self-Instruct, Agentic Self-Instruct
with the baseline harness, and with an evolved harness (weak avg, strong avg, gap, pass rate,
tokens per accepted example)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.dataset_stats import markdown_table, summary_row  # noqa: E402
from analysis.loaders import GenerationRun  # noqa: E402

log = logging.getLogger(__name__)

METHOD_COLUMNS = [
    "method",
    "run",
    "documents",
    "weak_avg",
    "strong_avg",
    "gap",
    "pass_rate",
    "tokens_per_accepted",
]


def methods_rows(runs: list[GenerationRun]) -> tuple[list[dict[str, Any]], bool]:
    """One row per run, and whether all runs cover the same documents (by document id)."""
    doc_sets = [frozenset(t.doc_id for t in r.trajectories) for r in runs]
    same = len(set(doc_sets)) <= 1
    if not same:
        log.warning("methods table: the runs do not cover the same documents; compare with care")
    return [summary_row(r) for r in runs], same


def write_methods(runs: list[GenerationRun], out_dir: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """``methods.md`` and ``methods.png``; returns their paths and the rows."""
    rows, same = methods_rows(runs)
    md = markdown_table(rows, METHOD_COLUMNS)
    if not same:
        md += "\n**Warning:** these runs do not cover the same documents.\n"
    md_path = out_dir / "methods.md"
    md_path.write_text("# Methods on the same documents\n\n" + md)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    metrics = ["weak_avg", "strong_avg", "gap", "pass_rate"]
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [m + i * width for m in range(len(metrics))]
        ax.bar(
            xs,
            [row[k] or 0.0 for k in metrics],
            width=width,
            label=f"{row['method']} [{row['run']}]",
        )
    ax.set_xticks([m + width * (len(rows) - 1) / 2 for m in range(len(metrics))], metrics)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title("Methods on the same documents" + ("" if same else " (documents differ!)"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "methods.png"
    fig.savefig(png)
    plt.close(fig)
    return md_path, png, rows
