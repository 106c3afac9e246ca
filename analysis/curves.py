"""Pass-rate-over-iterations curves of meta runs (single runs and Hydra multiruns).

The published Autodata figure plots the validation pass rate of every candidate per
iteration, the best-so-far line and the starting harness's level; it climbs from 12.8% to
42.4% over 233 iterations (126 admitted).
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.loaders import MetaRunRecords  # noqa: E402


def _finish(fig: Any, ax: Any, title: str, stem: Path) -> list[Path]:
    """Shared axes (iteration vs pass rate in [0, 1]), legend, and ``<stem>.png``/``.svg``."""
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation pass rate")
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
            }
        )
    return points


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
    return _finish(fig, ax, f"Validation pass rate per iteration — admitted {n_adm}/{len(pts)}", out_dir / "curve")


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
