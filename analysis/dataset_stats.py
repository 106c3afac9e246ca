"""Statistics of generated data: score distributions, failure modes per round, rounds to
acceptance, tokens per accepted example (PNGs and a markdown table)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis.loaders import GenerationRun  # noqa: E402
from inner.engine.records import FailureMode  # noqa: E402
from inner.engine.stats import compute_stats  # noqa: E402


def score_samples(run: GenerationRun) -> dict[str, list[float]]:
    """Weak avg, strong avg and gap of every round that reached the solvers (``weak``,
    ``strong``, ``gap``) and of accepted rounds only (``*_accepted``)."""
    out: dict[str, list[float]] = {
        k: [] for k in ("weak", "strong", "gap", "weak_accepted", "strong_accepted", "gap_accepted")
    }
    for t in run.trajectories:
        for r in t.rounds:
            acc = r.failure_mode is FailureMode.ACCEPTED
            for key, val in (("weak", r.weak_avg), ("strong", r.strong_avg), ("gap", r.gap)):
                if val is not None:
                    out[key].append(val)
                    if acc:
                        out[f"{key}_accepted"].append(val)
    return out


def failure_modes_per_round(run: GenerationRun) -> dict[int, dict[str, int]]:
    """``{round number: {failure mode: count}}`` over all documents."""
    table: dict[int, Counter[str]] = {}
    for t in run.trajectories:
        for r in t.rounds:
            table.setdefault(r.round, Counter())[r.failure_mode.value] += 1
    return {k: dict(v) for k, v in sorted(table.items())}


def rounds_to_acceptance(run: GenerationRun) -> list[int]:
    """The accepted round number of every accepted document."""
    return [t.rounds[-1].round for t in run.trajectories if t.status == "accepted" and t.rounds]


def summary_row(run: GenerationRun) -> dict[str, Any]:
    """The numbers of one run for the tables (fractions in [0, 1], tokens as counts), from
    :func:`inner.engine.stats.compute_stats` so reports and ``stats.json`` agree by construction."""
    st = compute_stats(
        run.trajectories, method=run.method_label, harness_id="", task="", this_invocation={}, wall_s=0.0
    )
    return {
        "run": run.name,
        "method": run.method_label,
        "documents": st["documents"],
        "accepted": st["accepted"],
        "pass_rate": st["pass_rate"],
        "weak_avg": st["final"]["weak_avg"],
        "strong_avg": st["final"]["strong_avg"],
        "gap": st["final"]["gap"],
        "mean_rounds_to_accept": st["mean_rounds_to_accept"],
        "tokens": st["tokens_total"],
        "tokens_per_accepted": st["tokens_total"] / st["accepted"] if st["accepted"] else None,
    }


def fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` restricted to ``columns``."""
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |\n" for r in rows)


def plot_dataset_stats(run: GenerationRun, out_dir: Path) -> list[Path]:
    """``stats_scores.png`` (weak/strong/gap histograms), ``stats_failure_modes.png`` (per
    round, stacked), ``stats_rounds.png`` (rounds to acceptance); returns their paths."""
    paths = []
    s = score_samples(run)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    bins = [i / 10 for i in range(11)]
    for ax, key, color in zip(axes, ("weak", "strong", "gap"), ("tab:red", "tab:green", "tab:blue"), strict=True):
        gap_bins = [-1 + i / 10 for i in range(21)] if key == "gap" else bins
        ax.hist(
            s[key],
            bins=gap_bins,
            color=color,
            alpha=0.45,
            label=f"all evaluated rounds (n={len(s[key])})",
        )
        ax.hist(
            s[f"{key}_accepted"],
            bins=gap_bins,
            color=color,
            alpha=0.95,
            label=f"accepted (n={len(s[key + '_accepted'])})",
        )
        ax.set_title(f"{key} {'avg' if key != 'gap' else '(strong - weak)'}")
        ax.legend(fontsize=7)
    fig.suptitle(f"Score distributions — {run.method_label}", fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "stats_scores.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    per_round = failure_modes_per_round(run)
    modes = [m.value for m in FailureMode if any(m.value in c for c in per_round.values())]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    rounds = list(per_round)
    bottom = [0] * len(rounds)
    for m in modes:
        vals = [per_round[r].get(m, 0) for r in rounds]
        ax.bar(rounds, vals, bottom=bottom, label=m)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("rounds (documents)")
    ax.set_title("Outcome of each round")
    if modes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "stats_failure_modes.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    rta = rounds_to_acceptance(run)
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
    counts = Counter(rta)
    xs = sorted(set(counts) | set(range(1, max(rta, default=1) + 1)))
    ax.bar(xs, [counts.get(x, 0) for x in xs], color="tab:green")
    ax.set_xticks(xs)
    row = summary_row(run)
    ax.set_title(
        f"Rounds to acceptance (n={len(rta)}); tokens/accepted: {fmt(row['tokens_per_accepted'])}",
        fontsize=9,
    )
    ax.set_xlabel("round of acceptance")
    ax.set_ylabel("documents")
    fig.tight_layout()
    paths.append(out_dir / "stats_rounds.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


STATS_COLUMNS = [
    "method",
    "documents",
    "accepted",
    "pass_rate",
    "weak_avg",
    "strong_avg",
    "gap",
    "mean_rounds_to_accept",
    "tokens",
    "tokens_per_accepted",
]


def stats_markdown(run: GenerationRun) -> str:
    """The statistics table plus failure modes per round, as markdown."""
    md = markdown_table([summary_row(run)], STATS_COLUMNS)
    per_round = failure_modes_per_round(run)
    modes = sorted({m for c in per_round.values() for m in c})
    rows = [{"round": r, **{m: c.get(m, 0) for m in modes}} for r, c in per_round.items()]
    if rows:
        md += "\nOutcome of each round:\n\n" + markdown_table(rows, ["round", *modes])
    return md
