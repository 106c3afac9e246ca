"""Admission benchmark with ground truth: how often does each rule admit a mutant that is no better?

A synthetic world where the truth is known. Each validation document ``i`` has a parent pass
probability ``p_i ~ Beta(a, b)`` with concentration ``a + b = 2`` (``--concentration``):
heterogeneous documents, many that nearly always pass or nearly always fail, as in real
validation sets. Two settings: mean 0.3 (Beta(0.6, 1.4)) and mean 0.6 (Beta(1.2, 0.8)). A mutant
has ``p_i' = expit(logit(p_i) + delta)`` with ``delta`` solved (Newton's method safeguarded by
bisection) so that the mean gain over that decision's documents, ``mean_i(p_i' - p_i)``, is
exactly 0, +6 or +12 points of pass rate in expectation (a neutral mutant has ``p_i' = p_i``
exactly). A replicate of a harness draws
``Bernoulli(p_i)`` per document with a seeded numpy generator.

For every decision, fresh documents are drawn and the parent starts with ``--parent-runs``
replicates already tallied (3: the run's noise floor, ``meta.noise_reps``), then the project's
own procedure decides: ``meta.admission.decide`` with ``AdmissionConfig(rule=...)`` and every
other setting at its default (``--set FIELD=VALUE`` overrides one). Counted: admitted decisions,
and document evaluations spent (the candidate's replicates, the parent's top-up, and the strict
rule's fresh parent run).

Printed per cell (rule, validation documents, mean p, gain): admit_rate (for gain 0 that is the
false admission rate; for a gain > 0 the power), evals_per_decision and, in the table, candidate
replicates per decision. One ``asyncio.run`` per cell, cells spread over ``--jobs`` processes.
Common random numbers: a decision's documents and the uniforms of each replicate are drawn from a
generator keyed by (seed, documents, mean, decision index), not by rule, gain or config, so strict
and paired (and ``--set`` variants) see the same worlds and differ only in what they decide.

Run from the repository root::

    .venv/bin/python experiments/bench/admission.py                  # table, 1000 decisions per cell
    .venv/bin/python experiments/bench/admission.py --json           # one JSON object per cell
    .venv/bin/python experiments/bench/admission.py --rules paired --docs 25 --set race_alpha=None
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meta.admission import AdmissionConfig, Tallies, decide  # noqa: E402

MEANS = (0.3, 0.6)
GAINS_PP = (0, 6, 12)
DOCS = (25, 50)
RULES = ("strict", "paired")
CLIP = 1e-9


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def shifted(p: np.ndarray, gain: float) -> np.ndarray:
    """``expit(logit(p) + delta)`` with ``delta`` such that ``mean(result - p) == gain``.

    ``gain`` in pass-rate units (0.12 = 12 points); 0 returns ``p`` itself. ``delta`` is found by
    Newton's method safeguarded by bisection (the mean is increasing in ``delta``) to 1e-12.
    Raises ValueError when the gain is out of reach (``gain >= mean(1 - p)`` or ``<= -mean(p)``).
    """
    if gain == 0:
        return p
    n = p.size
    if gain >= float(np.sum(1 - p)) / n or gain <= -float(np.sum(p)) / n:
        raise ValueError(f"gain {gain} out of reach for mean p {float(np.sum(p)) / n:.3f}")
    logit = np.log(p) - np.log1p(-p)
    target = float(np.sum(p)) / n + gain
    lo, hi = (0.0, 50.0) if gain > 0 else (-50.0, 0.0)
    delta = gain * 4  # the slope of expit is at most 1/4
    for _ in range(200):
        s = expit(logit + delta)
        f = float(np.sum(s)) / n - target
        if abs(f) < 1e-12:
            break
        if f < 0:
            lo = delta
        else:
            hi = delta
        slope = float(np.sum(s * (1 - s))) / n
        step = delta - f / slope if slope > 0 else lo - 1.0
        delta = step if lo < step < hi else (lo + hi) / 2
    return expit(logit + delta)


ROWS = 16  # replicates pre-drawn per role and decision (more come from a keyed stream of their own)


def stream(seed: int, n_docs: int, mean_p: float, decision: int, *key: int) -> np.random.Generator:
    """The generator of one decision's world (no key) or of one extra replicate (key = (role, k)).

    Keyed by the decision and not by the rule or the gain: every rule and gain sees the same documents
    (``p_i``) and the same uniforms per replicate (common random numbers), so cells differ only by
    what they compare, and a replicate's draws do not depend on how many replicates came before.
    """
    return np.random.default_rng([seed, n_docs, round(mean_p * 1000), decision, *key])


async def run_cell(
    rule: str,
    n_docs: int,
    mean_p: float,
    gain_pp: int,
    *,
    decisions: int,
    seed: int,
    parent_runs: int,
    conc: float,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``decisions`` independent admissions in one world setting; returns the cell's figures.

    The config is ``AdmissionConfig(rule=rule, **overrides)``: every other setting at its default
    unless ``--set`` overrides it.
    """
    cfg = AdmissionConfig(rule=rule, **(overrides or {}))
    docs = [f"d{i:03d}" for i in range(n_docs)]
    a, b = mean_p * conc, (1 - mean_p) * conc
    admitted = evals = candidate_runs = 0
    for j in range(decisions):
        world = stream(seed, n_docs, mean_p, j)
        p = np.clip(world.beta(a, b, size=n_docs), CLIP, 1 - CLIP)
        q = shifted(p, gain_pp / 100)
        uniforms = world.random((2, ROWS, n_docs))  # [role: candidate, parent][replicate k][document]

        def draw(probs: np.ndarray, role: int, k: int, j: int = j, uniforms: np.ndarray = uniforms) -> dict[str, bool]:
            u = uniforms[role, k] if k < ROWS else stream(seed, n_docs, mean_p, j, role, k).random(n_docs)
            return dict(zip(docs, (u < probs).tolist(), strict=True))

        parent = Tallies()
        for k in range(parent_runs):
            parent.add_run(draw(p, 1, k))

        async def evaluate_candidate(k: int, q: np.ndarray = q, draw=draw) -> dict[str, bool]:
            return draw(q, 0, k)

        async def evaluate_parent(k: int, p: np.ndarray = p, draw=draw) -> dict[str, bool]:
            return draw(p, 1, k)

        decision, _, _ = await decide(
            cfg, docs=docs, parent=parent, evaluate_candidate=evaluate_candidate, evaluate_parent=evaluate_parent
        )
        admitted += decision.admitted
        evals += decision.evals
        candidate_runs += decision.candidate_runs
    return {
        "rule": rule,
        "n_docs": n_docs,
        "mean_p": mean_p,
        "gain_pp": gain_pp,
        "admit_rate": admitted / decisions,
        "evals_per_decision": evals / decisions,
        "decisions": decisions,
        "candidate_runs_per_decision": candidate_runs / decisions,
    }


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["race_alpha=0.2", "max_replicates=4"]`` -> AdmissionConfig overrides (None, bools, ints, floats)."""
    fields = set(AdmissionConfig.__dataclass_fields__) - {"rule"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        low = raw.strip().lower()
        if low in ("none", "null"):
            out[key] = None
        elif low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(raw)
            except ValueError:
                out[key] = float(raw)
    AdmissionConfig(**out)  # fail before the run on an invalid value
    return out


JSON_KEYS = ("rule", "n_docs", "mean_p", "gain_pp", "admit_rate", "evals_per_decision", "decisions")


def _cell(job: tuple[str, int, float, int, dict[str, Any]]) -> dict[str, Any]:
    """One cell in a worker process: one event loop for all its decisions."""
    rule, n_docs, mean_p, gain_pp, kw = job
    return asyncio.run(run_cell(rule, n_docs, mean_p, gain_pp, **kw))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=1000, help="decisions per cell (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parent-runs", type=int, default=3, help="replicates the parent has tallied before (default 3)")
    ap.add_argument("--concentration", type=float, default=2.0, help="a + b of the Beta of p_i (default 2)")
    ap.add_argument("--docs", type=int, nargs="+", default=list(DOCS), help="validation set sizes (default 25 50)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an AdmissionConfig default for the paired and strict runs (repeatable), e.g. race_alpha=0.2",
    )
    ap.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes, one cell each (default 2)"
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per cell instead of the table")
    args = ap.parse_args(argv)
    if args.decisions < 1 or args.parent_runs < 0 or args.concentration <= 0 or args.jobs < 1:
        ap.error("need --decisions >= 1, --parent-runs >= 0, --concentration > 0, --jobs >= 1")
    try:
        overrides = parse_set(args.set)
    except ValueError as e:
        ap.error(str(e))

    kw = {
        "decisions": args.decisions,
        "seed": args.seed,
        "parent_runs": args.parent_runs,
        "conc": args.concentration,
        "overrides": overrides,
    }
    jobs = [
        (rule, n_docs, mean_p, gain_pp, kw)
        for rule in args.rules
        for n_docs in args.docs
        for mean_p in MEANS
        for gain_pp in GAINS_PP
    ]
    t0 = time.perf_counter()
    if not args.json:
        print(f"{'rule':<7} {'docs':>4} {'mean p':>6} {'gain':>5} {'admit':>7} {'evals/dec':>9} {'cand reps':>9}")
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else nullcontext() as pool:
        results = pool.map(_cell, jobs) if pool is not None else map(_cell, jobs)
        for row in results:  # in job order
            if args.json:
                print(json.dumps({k: row[k] for k in JSON_KEYS}), flush=True)
            else:
                print(
                    f"{row['rule']:<7} {row['n_docs']:>4} {row['mean_p']:>6.1f} {'+' + str(row['gain_pp']):>5} "
                    f"{row['admit_rate']:>7.3f} {row['evals_per_decision']:>9.1f} "
                    f"{row['candidate_runs_per_decision']:>9.2f}",
                    flush=True,
                )
    took = time.perf_counter() - t0
    if not args.json:
        se = math.sqrt(0.25 / args.decisions)
        print(
            f"\n{len(jobs)} cells x {args.decisions} decisions in {took:.1f} s wall (--jobs {args.jobs}); "
            f"parent runs {args.parent_runs}, Beta concentration {args.concentration:g}, seed {args.seed}; "
            f"admit rate standard error <= {se:.3f}; "
            f"AdmissionConfig defaults{' with ' + json.dumps(overrides) if overrides else ''}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
