"""Executor overhead: the same scripted workload with ``executor=ray`` against ``executor=local``.

The workload is :mod:`experiments.bench.inner_throughput`'s (the scripted server in its own
process with a fixed latency, the real client, the sandbox, a fresh cache per run so nothing is
replayed). The two executors alternate in one sitting (local, ray, local, ray, ...), so a change
in the machine's load hits both. ``executor=ray`` runs in local mode on this machine: one Ray
instance of ``--num-cpus`` CPUs (2 by default) started once before the first repetition (its
start-up time is reported apart: a long run pays it once), two actors by default, each with half
of the endpoint's in-flight requests and half of the documents in flight; the actors are created
inside each timed run (their start-up is counted).

Printed: per repetition the wall time, calls, calls/s and the load average; then the mean calls/s
of each executor and their ratio (goal: ray >= 0.9 of local).

Run from the repository root (needs the ray extra)::

    .venv/bin/python experiments/bench/executor.py                    # 60 docs, 0.2 s, 32 in flight, 2 reps
    .venv/bin/python experiments/bench/executor.py --docs 120 --reps 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.bench import inner_throughput  # noqa: E402


def bench_args(args: argparse.Namespace, executor: str) -> argparse.Namespace:
    """:mod:`inner_throughput`'s arguments for one run with ``executor``."""
    extra = [f"executor={executor}"]
    if executor == "ray":
        extra += [f"executor.workers={args.workers}"]
    return argparse.Namespace(
        docs=args.docs, latency=args.latency, in_flight=args.in_flight, rounds=args.rounds,
        concurrent_docs=args.concurrent_docs, doc_chars=args.doc_chars, set=[*args.set, *extra], profile=None,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=60, help="synthetic documents per run (default 60)")
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per call, seconds (default 0.2)")
    ap.add_argument("--in-flight", type=int, default=32, help="llm.endpoints.default.max_in_flight (default 32)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per document (default 3)")
    ap.add_argument(
        "--concurrent-docs", type=int, default=0, help="inner.max_concurrent_documents (default 2 x in flight)"
    )
    ap.add_argument("--doc-chars", type=int, default=4000, help="characters per synthetic document (default 4000)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each executor, alternating (default 2)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="executor.workers (default 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    args = ap.parse_args(argv)

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            for executor in ("local", "ray"):
                res = inner_throughput.run_bench(bench_args(args, executor))
                row = {"executor": executor, "rep": rep, **{k: res[k] for k in (
                    "wall_s", "calls", "expected_calls", "accepted", "errored", "calls_per_s", "fraction_of_ceiling",
                    "cpu_ms_per_call", "loadavg_before", "loadavg_after")}}  # fmt: skip
                runs.append(row)
                print(
                    f"{executor:5s} rep {rep}: {row['wall_s']:7.2f} s, {row['calls']} calls "
                    f"(expected {row['expected_calls']}), {row['calls_per_s']:.1f} calls/s, accepted {row['accepted']}, "
                    f"driver CPU {row['cpu_ms_per_call']} ms/call, load {row['loadavg_before']} -> {row['loadavg_after']}",
                    flush=True,
                )
    finally:
        ray.shutdown()
    mean = {e: statistics.fmean(r["calls_per_s"] for r in runs if r["executor"] == e) for e in ("local", "ray")}
    out = {
        "docs": args.docs, "rounds": args.rounds, "latency_s": args.latency, "in_flight": args.in_flight,
        "workers": args.workers, "num_cpus": args.num_cpus, "ray_init_s": round(ray_init_s, 2),
        "mean_calls_per_s": {k: round(v, 2) for k, v in mean.items()},
        "ray_over_local": round(mean["ray"] / mean["local"], 3), "runs": runs, "cpus": os.cpu_count(),
    }  # fmt: skip
    print(
        f"Ray start-up (once) {out['ray_init_s']} s; mean calls/s: local {out['mean_calls_per_s']['local']}, "
        f"ray {out['mean_calls_per_s']['ray']}; ray / local = {out['ray_over_local']} (goal >= 0.9)"
    )
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
