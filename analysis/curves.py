"""Pass-rate-over-iterations curves of meta runs (single runs and Hydra multiruns).

The published Autodata figure plots the validation pass rate of every candidate per
iteration, the best-so-far line and the starting harness's level; it climbs from 12.8% to
42.4% over 233 iterations (126 admitted). Runs with a noise floor (``noise_floor.json``) also
show the starting harness's replicate band (mean +- 1 std) and, when confirmed, the best
harness's gain on the sealed test split with its 95% interval (:func:`confirmation_text`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.loaders import MetaRunRecords  # noqa: E402


def _finish(fig: Any, ax: Any, title: str, stem: Path, ylabel: str = "validation pass rate") -> list[Path]:
    """Shared axes (iteration vs a score in [0, 1]), legend, and ``<stem>.png``/``.svg``."""
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def curve_points(meta: MetaRunRecords) -> list[dict[str, Any]]:
    """One point per iteration from ``history.jsonl``: iteration, status, candidate_val
    (``None`` for invalid edits), parent_val, admitted, and best_so_far (the archive's best
    validation pass rate after the iteration, the root's level before any admission)."""
    best = meta.baseline if meta.baseline is not None else 0.0
    points = []
    for h in sorted(meta.history, key=lambda h: h["iteration"]):
        if h.get("admitted") and h.get("candidate_val") is not None:
            best = max(best, h["candidate_val"])
        points.append(
            {
                "iteration": h["iteration"],
                "status": h["status"],
                "candidate_val": h.get("candidate_val"),
                "parent_val": h.get("parent_val"),
                "admitted": bool(h.get("admitted")),
                "best_so_far": best,
                "T": h.get("T"),
                "p_value": h.get("p_value"),
            }
        )
    return points


def noise_band(meta: MetaRunRecords) -> dict[str, Any] | None:
    """The starting harness's noise floor (``summary.json``'s ``noise_floor``, else the root line
    of ``curve.jsonl``): ``n_replicates``, ``mean``, ``std``, ``min``, ``max``; ``None`` if absent."""
    floor = meta.summary.get("noise_floor")
    if floor is None:
        floor = next((c.get("noise_floor") for c in meta.curve if c.get("iteration") == 0), None)
    return floor


def base_student(meta: MetaRunRecords) -> dict[str, Any] | None:
    """Under ``student_gain``: the untrained student's public score and the noise between two
    base evaluations (the root line of ``curve.jsonl``); else ``None``."""
    root = next((c for c in meta.curve if c.get("iteration") == 0 and "base_score" in c), None)
    return {"score": root["base_score"], "noise": root.get("base_noise")} if root else None


def confirmation_text(meta: MetaRunRecords) -> str:
    """One sentence on the confirmation on the sealed test split (``summary.json``)."""
    conf = meta.summary.get("confirmation")
    if not conf:
        return meta.summary.get("confirmation_note") or "not confirmed on the sealed test split"
    if "private" in conf:  # student_gain: the private replay (meta/student.py)
        from meta.student import private_replay_text

        return f"private replay ({conf['items']} items): {private_replay_text(conf, base='base student')}"
    if conf.get("best_is_start"):
        return f"best = starting harness (gain 0); its test pass rate {conf['start_pass_rate']:.3f}"
    lo, hi = conf["ci95_points"]
    return (
        f"confirmed test gain {conf['gain_points']:+.1f} points (95% CI {lo:+.1f} to {hi:+.1f}, "
        f"sign-flip p={conf['p_value']:.3f}, {len(conf['per_doc'])} docs x {conf['replicates']} replicates)"
    )


def admission_section(meta: MetaRunRecords) -> list[str]:
    """Markdown for the report: the noise floor, each candidate's admission (T in documents,
    sign-flip p-value, admitted or not) and the confirmed test gain with its interval."""

    def num(x: Any, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    floor = noise_band(meta)
    lines = ["## Admission\n"]
    base = base_student(meta)
    if base:
        lines.append(
            f"Untrained student's public score: {base['score']:.3f} (noise between two base evaluations with "
            f"different seeds: {num(base.get('noise'), '.3f')}); a harness's score is its trained student's.\n"
        )
    if floor:
        std = num(floor.get("std"), ".3f")
        lines.append(
            f"Noise floor of the starting harness: pass rate {floor['mean']:.3f} ± {std} (std over "
            f"{floor['n_replicates']} replicates; range {floor['min']:.3f}–{floor['max']:.3f}).\n"
        )
    rows = ["| iteration | status | candidate val | parent val | T (docs) | p |", "|---|---|---|---|---|---|"]
    for p in curve_points(meta):
        rows.append(
            f"| {p['iteration']} | {p['status']} | {num(p['candidate_val'], '.3f')} | {num(p['parent_val'], '.3f')} "
            f"| {num(p['T'], '.2f')} | {num(p['p_value'], '.3f')} |"
        )
    lines += ["\n".join(rows) + "\n", f"Confirmation: {confirmation_text(meta)}.\n"]
    return lines


def plot_curve(meta: MetaRunRecords, out_dir: Path) -> list[Path]:
    """Write ``curve.png`` and ``curve.svg``; returns their paths."""
    pts = curve_points(meta)
    n_adm = sum(p["admitted"] for p in pts)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    adm = [p for p in pts if p["admitted"]]
    rej = [p for p in pts if not p["admitted"] and p["candidate_val"] is not None and p["status"] != "crashed"]
    crashed = [p for p in pts if p["status"] == "crashed" and p["candidate_val"] is not None]
    inv = [p for p in pts if p["candidate_val"] is None]
    ax.scatter(
        [p["iteration"] for p in rej],
        [p["candidate_val"] for p in rej],
        marker="x",
        color="0.5",
        label="rejected candidate",
    )
    ax.scatter(
        [p["iteration"] for p in adm],
        [p["candidate_val"] for p in adm],
        marker="o",
        color="tab:green",
        zorder=3,
        label="admitted candidate",
    )
    if crashed:
        xs, ys = [p["iteration"] for p in crashed], [p["candidate_val"] for p in crashed]
        ax.scatter(xs, ys, marker="x", color="tab:red", label="crashed candidate (contained)")
    if inv:
        ax.scatter(
            [p["iteration"] for p in inv],
            [0.0] * len(inv),
            marker="|",
            s=200,
            color="tab:red",
            label="invalid edit (no score)",
        )
    if pts:
        xs = [0] + [p["iteration"] for p in pts]
        ys = [meta.baseline or 0.0] + [p["best_so_far"] for p in pts]
        ax.step(xs, ys, where="post", color="tab:blue", label="best so far")
    if meta.baseline is not None:
        ax.axhline(
            meta.baseline,
            linestyle="--",
            color="tab:orange",
            label=f"starting harness ({meta.baseline:.3f})",
        )
    floor = noise_band(meta)
    if floor and floor.get("std") is not None:
        lo, hi = floor["mean"] - floor["std"], floor["mean"] + floor["std"]
        ax.axhspan(lo, hi, color="tab:orange", alpha=0.15,
                   label=f"noise floor ±1 std ({floor['n_replicates']} replicates)")  # fmt: skip
    base = base_student(meta)
    if base:
        ax.axhline(base["score"], linestyle=":", color="tab:purple", label=f"untrained student ({base['score']:.3f})")
    label = meta.score_label
    title = f"{label[0].upper()}{label[1:]} per iteration — admitted {n_adm}/{len(pts)}"
    if meta.summary:
        title += "\n" + textwrap.fill(confirmation_text(meta), 95)
    return _finish(fig, ax, title, out_dir / "curve", ylabel=label)


def aggregate_curves(members: list[MetaRunRecords]) -> list[dict[str, Any]]:
    """Mean and population standard deviation of best-so-far across members, per iteration
    (a member that stopped earlier carries its last value forward)."""
    per_member = [curve_points(m) for m in members]
    horizon = max((len(p) for p in per_member), default=0)
    rows = []
    for it in range(horizon + 1):
        vals = []
        for m, pts in zip(members, per_member, strict=True):
            if it == 0:
                vals.append(m.baseline or 0.0)
            elif pts:
                vals.append(pts[min(it, len(pts)) - 1]["best_so_far"])
        rows.append(
            {
                "iteration": it,
                "mean": fmean(vals),
                "std": pstdev(vals) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
        )
    return rows


def final_scores(members: list[MetaRunRecords]) -> list[dict[str, Any]]:
    """Per member: name, iterations, admitted, baseline and best validation pass rates."""
    out = []
    for m in members:
        pts = curve_points(m)
        out.append(
            {
                "member": m.path.name,
                "iterations": len(pts),
                "admitted": sum(p["admitted"] for p in pts),
                "baseline": m.baseline,
                "best": pts[-1]["best_so_far"] if pts else m.baseline,
            }
        )
    return out


def plot_multirun(members: list[MetaRunRecords], out_dir: Path) -> list[Path]:
    """``multirun_curve.png``/``.svg``: mean best-so-far with a +-1 std band across members."""
    rows = aggregate_curves(members)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    xs = [r["iteration"] for r in rows]
    mean = [r["mean"] for r in rows]
    lo = [max(0.0, r["mean"] - r["std"]) for r in rows]
    hi = [min(1.0, r["mean"] + r["std"]) for r in rows]
    ax.step(xs, mean, where="post", color="tab:blue", label=f"mean best so far (n={len(members)})")
    ax.fill_between(xs, lo, hi, step="post", alpha=0.25, color="tab:blue", label="±1 std")
    for m in members:
        pts = curve_points(m)
        ax.step([0] + [p["iteration"] for p in pts], [m.baseline or 0.0] + [p["best_so_far"] for p in pts],
                where="post", alpha=0.35, linewidth=0.8)  # fmt: skip
    finals = [f["best"] for f in final_scores(members) if f["best"] is not None]
    spread = f"{fmean(finals):.3f} ± {pstdev(finals):.3f}" if finals else "n/a"
    title = f"Best validation pass rate across {len(members)} runs — final {spread}"
    return _finish(fig, ax, title, out_dir / "multirun_curve")
