"""Replicas benchmark: does one endpoint with two replicas serve twice the calls of one?

Two scripted OpenAI-compatible servers (``tests/scripted_server.py --servers 2``: one
process, two ports, one shared script; fresh for each run) each answer after a fixed latency
``L`` (default 200 ms) and work on at most ``K`` completions at once (``--max-concurrent``,
default 16: a server with ``K`` slots). The project's LLM client (``inner.llm.client.LLMClient``,
the real ``openai`` client over loopback HTTP, no response cache) sends calls with
``llm.endpoints.default.max_in_flight=K`` through:

- ``one``: ``base_urls: [server 1]``: ceiling ``K / L`` calls/s (16 / 0.2 s = 80);
- ``two``: ``base_urls: [server 1, server 2]``: ceiling ``2 K / L`` (160).

Load: ``--callers`` concurrent callers (default 4 K, so requests always wait for a replica)
each sending one call after another until ``--calls`` calls are done, after one untimed
warm-up run. The two setups alternate in one sitting (``--repeats`` times each, default 3).
Printed per run: calls/s over the whole run and in steady state (the middle 80 % of
completions: the last partial wave of a short run is not the endpoint's rate), its fraction
of the ceiling, the requests each replica got and its in-flight peak, and the CPU per call of
this process and of the servers' process; then the median steady ratio two/one (goal: at
least 1.8) and the load average.

``--inner`` drives the inner loop instead (``inner.engine.run.run_generate`` on synthetic
documents, as ``experiments/bench/inner_throughput.py``: sandboxes, evaluator and all), with
``2 K`` documents in flight per replica; on a loaded 2-core machine the sandbox start-up, not
the endpoint, may then be the limit.

Run from the repository root::

    .venv/bin/python experiments/bench/replicas.py             # 800 calls per run, K=16, 200 ms
    .venv/bin/python experiments/bench/replicas.py --json      # plus one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_REF = "experiments.bench.replicas:script"


def script(role: str, body: dict[str, Any]) -> str:
    """The scripted servers' completion (imported by name in their processes)."""
    return "ok " + str(body["messages"][-1]["content"])[:40]


def start_server(latency: float, max_concurrent: int, script_ref: str, n: int) -> tuple[Any, list[int]]:
    """One scripted server process serving ``n`` servers (replicas) on their own ports, each
    with ``max_concurrent`` slots, sharing one script (the inner loop's scenario counts a
    document's rounds, so its replicas must share it); returns the process and the ports."""
    from experiments.bench import inner_throughput as it

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env[it.ROUNDS_ENV] = "3"
    cmd = [
        sys.executable, "-m", "tests.scripted_server", "--script", script_ref,
        "--latency", str(latency), "--max-concurrent", str(max_concurrent), "--servers", str(n),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"scripted server did not start (printed {line!r})")
    return proc, [int(p) for p in line.split()[1:]]


@contextlib.contextmanager
def servers(args: argparse.Namespace, ref: str, n: int = 2) -> Iterator[tuple[list[str], Any]]:
    """:func:`start_server` with ``n`` replicas; yields their URLs and the process."""
    proc, ports = start_server(args.latency, args.max_concurrent, ref, n)
    try:
        yield [f"http://127.0.0.1:{port}/v1" for port in ports], proc
    finally:
        proc.terminate()
        proc.wait(10)


def compose(*overrides: str) -> Any:
    """The real composed ``generate`` config with ``overrides`` (as ``autodata-generate``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from inner.config import register_configs
    from inner.paths import PROJECT_ROOT

    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose(config_name="generate", overrides=list(overrides)))


def llm_overrides(urls: list[str], k: int) -> list[str]:
    return [
        "llm=openai",
        "llm.endpoints.default.api_key_env=null",
        "llm.endpoints.default.base_url=null",
        f"llm.endpoints.default.base_urls=[{','.join(urls)}]",
        f"llm.endpoints.default.max_in_flight={k}",
        "llm.endpoints.default.timeout_s=60",
        "llm.endpoints.default.max_retries=0",
        "llm.endpoints.default.model=scripted",
    ]


async def client_run(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``args.calls`` judge calls from ``args.callers`` concurrent callers through one client."""
    from inner.llm.client import LLMClient

    cfg = compose(*llm_overrides(urls, args.max_concurrent)).llm
    client = LLMClient(cfg)
    next_call = 0
    done: list[float] = []  # perf_counter() of each completion

    async def caller() -> None:
        nonlocal next_call
        while next_call < args.calls:
            i = next_call
            next_call += 1
            await client.complete("judge", [{"role": "user", "content": f"call {i}"}])
            done.append(time.perf_counter())

    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.callers)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        counts = client.replica_counts()["default"]
    finally:
        await client.aclose()
    lo, hi = int(0.1 * len(done)), int(0.9 * len(done))
    return {
        "calls": args.calls,
        "wall_s": wall,
        "steady_calls_per_s": (hi - lo) / (done[hi] - done[lo]),
        "cpu_s": cpu,
        "replicas": counts,
        "failures": client.usage.total_failures,
    }


def inner_run(urls: list[str], args: argparse.Namespace, tmp: Path, tag: str) -> dict[str, Any]:
    """The inner loop on ``args.docs`` synthetic documents over ``urls``."""
    from experiments.bench import inner_throughput as it
    from inner.engine.run import run_generate

    corpus, run_dir = tmp / "corpus", tmp / f"run-{tag}"
    if not corpus.exists():
        it.write_corpus(corpus, args.docs, 4000)
    k = args.max_concurrent
    cfg = compose(
        f"task.corpus={corpus}", "progress=false", "inner.max_rounds=3",
        f"inner.max_concurrent_documents={2 * k * len(urls)}", *llm_overrides(urls, k),
    )  # fmt: skip
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats = asyncio.run(run_generate(cfg, run_dir, base_urls={}))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    calls = sum(u["calls"] for u in stats["this_invocation"].values())
    steady = it.steady_state(run_dir / "calls.jsonl", k)["steady_calls_per_s"] or calls / wall
    return {
        "calls": calls,
        "wall_s": wall,
        "steady_calls_per_s": steady,
        "cpu_s": cpu,
        "replicas": stats["replicas"]["default"],
        "failures": stats["failures"],
        "accepted": stats["accepted"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per completion (default 0.2)")
    ap.add_argument("--max-concurrent", type=int, default=16, help="K: slots per server = max_in_flight (16)")
    ap.add_argument("--calls", type=int, default=800, help="calls per run (default 800)")
    ap.add_argument("--callers", type=int, default=0, help="concurrent callers (default 4 K)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each setup, alternating (default 3)")
    ap.add_argument("--inner", action="store_true", help="drive the inner loop instead of the client")
    ap.add_argument("--docs", type=int, default=60, help="documents per run with --inner (default 60)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args(argv)
    args.callers = args.callers or 4 * args.max_concurrent
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from experiments.bench import inner_throughput as it

    ref = "experiments.bench.inner_throughput:script" if args.inner else SCRIPT_REF
    ceiling = args.max_concurrent / args.latency
    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="autodata-bench-replicas-") as tmp:
        if not args.inner:  # imports, config composition and connections once, before any timing
            with servers(args, ref) as (urls, _):
                asyncio.run(client_run(urls, argparse.Namespace(**{**vars(args), "calls": 2 * args.callers})))
        for rep in range(args.repeats):
            for setup, n in (("one", 1), ("two", 2)):
                # fresh servers each run: the inner loop's scenario keeps per-document state
                with servers(args, ref, n) as (urls, proc):
                    srv0 = it.proc_cpu_s(proc.pid) or 0.0
                    if args.inner:
                        r = inner_run(urls, args, Path(tmp), f"{setup}-{rep}")
                    else:
                        r = asyncio.run(client_run(urls, args))
                    srv = (it.proc_cpu_s(proc.pid) or 0.0) - srv0
                r |= {"setup": setup, "calls_per_s": r["calls"] / r["wall_s"]}
                r |= {
                    "cpu_ms_per_call": 1000 * r["cpu_s"] / r["calls"],
                    "server_cpu_ms_per_call": 1000 * srv / r["calls"],
                }
                r["fraction_of_ceiling"] = r["steady_calls_per_s"] / (ceiling * n)
                runs.append(r)
                per = ", ".join(f"{x['requests']} req peak {x['in_flight_peak']}" for x in r["replicas"])
                print(
                    f"{setup}: {r['calls']} calls in {r['wall_s']:.2f} s = {r['calls_per_s']:.1f} calls/s; "
                    f"steady {r['steady_calls_per_s']:.1f} = {r['fraction_of_ceiling']:.3f} of "
                    f"{ceiling * n:.0f}; failures {r['failures']}; "
                    f"replicas: {per}; CPU/call {r['cpu_ms_per_call']:.2f} ms here, "
                    f"{r['server_cpu_ms_per_call']:.2f} ms in the servers",
                    flush=True,
                )
    load_after = os.getloadavg()
    one = statistics.median(r["steady_calls_per_s"] for r in runs if r["setup"] == "one")
    two = statistics.median(r["steady_calls_per_s"] for r in runs if r["setup"] == "two")
    one_whole = statistics.median(r["calls_per_s"] for r in runs if r["setup"] == "one")
    two_whole = statistics.median(r["calls_per_s"] for r in runs if r["setup"] == "two")
    res = {
        "mode": "inner" if args.inner else "client",
        "latency_s": args.latency,
        "max_concurrent": args.max_concurrent,
        "callers": None if args.inner else args.callers,
        "calls_per_run": args.calls if not args.inner else None,
        "repeats": args.repeats,
        "one_calls_per_s": round(one, 2),
        "two_calls_per_s": round(two, 2),
        "ratio": round(two / one, 3),
        "ratio_whole_run": round(two_whole / one_whole, 3),
        "ceiling_one": round(ceiling, 2),
        "runs": [{k: v for k, v in r.items() if k != "wall_s"} | {"wall_s": round(r["wall_s"], 3)} for r in runs],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    print(
        f"median steady calls/s: one replica {one:.1f}, two replicas {two:.1f}: ratio {two / one:.3f} (goal >= 1.8; "
        f"whole runs {two_whole / one_whole:.3f}); "
        f"load average before {res['loadavg_before']}, after {res['loadavg_after']} ({res['cpus']} CPUs)",
        flush=True,
    )
    if args.json:
        print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
