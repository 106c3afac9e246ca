"""Inner-loop throughput benchmark: how close does the framework get to the endpoint's ceiling?

The scripted OpenAI-compatible server (``tests/scripted_server.py``) runs as a separate
process and answers every completion after a fixed latency (default 200 ms). The inner loop
(``inner.engine.run.run_generate``, the real ``openai`` client over loopback HTTP, a fresh response
cache so nothing is replayed) runs on many synthetic documents with the endpoint saturated
(``max_in_flight`` requests in flight, twice as many documents in flight). With latency ``L``
and ``K`` requests in flight the ceiling is ``K / L`` calls/s (64 / 0.2 s = 320 calls/s).

Printed: wall time, total calls, accepted documents, calls/s and its fraction of the ceiling
(whole run, and the steady-state middle 80 % of calls), mean requests in flight, and the
framework's CPU time per call (``time.process_time()`` of this process over the run; the
server's CPU is in another process and is reported separately), and the sandboxes' CPU per
document (every sandbox process, harness included: a cgroup v1 ``cpuacct`` group,
:class:`experiments.bench.sandbox_startup.SandboxCPU`; ``--set inner.sandbox_mode=fresh`` compares
with a fresh sandbox per document).

Scenario (per document, ``--rounds N``): rounds 1..N-1 alternate TOO_EASY (weak scores 0.8:
the weak-first gate short-circuits, the strong solver is skipped; 8 calls + 1 main-agent
feedback call) and FAILED_STRONG (weak 0.5, strong 0.6, gap 0.1: 14 calls + 1 feedback call);
round N is ACCEPTED (weak 0.5, strong 0.9: 14 calls, no feedback). Default N=3: 38 calls per
document.

Run from the repository root::

    .venv/bin/python experiments/bench/inner_throughput.py            # 800 docs, 0.2 s, 64 in flight
    .venv/bin/python experiments/bench/inner_throughput.py --json     # plus one JSON line

The server imports this module by name (``experiments.bench.inner_throughput:script``), so
the module keeps its top level free of heavy imports; the scenario's round count reaches the
server process through the environment variable ``AUTODATA_BENCH_ROUNDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_REF = "experiments.bench.inner_throughput:script"
ROUNDS_ENV = "AUTODATA_BENCH_ROUNDS"

# -- server side (runs in the scripted server's process) -------------------------------------

_SCENARIO: Any = None


def round_plans(n_rounds: int) -> list[Any]:
    """The per-document round plans: n-1 failing rounds (TOO_EASY, FAILED_STRONG, ...) then
    an accepted one."""
    from tests.scenario import RoundPlan

    too_easy = RoundPlan(weak=[0.8, 0.8, 0.8])
    failed_strong = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.6, 0.6, 0.6])
    accept = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])
    fails = [too_easy if i % 2 == 0 else failed_strong for i in range(n_rounds - 1)]
    return [*fails, accept]


def expected_calls_per_doc(n_rounds: int) -> int:
    """Calls one document makes under :func:`round_plans` (with the baseline harness)."""
    fails = [9 if i % 2 == 0 else 15 for i in range(n_rounds - 1)]  # +1 main-agent feedback each
    return sum(fails) + 14


def script(role: str, body: dict[str, Any]) -> Any:
    """The scripted server's completion function (imported by name in the server process)."""
    global _SCENARIO
    if _SCENARIO is None:
        from tests.scenario import Scenario

        _SCENARIO = Scenario({"*": round_plans(int(os.environ.get(ROUNDS_ENV, "3")))})
    return _SCENARIO(role, body)


# -- benchmark side --------------------------------------------------------------------------

FILLER = (
    "The method builds on prior work and evaluates a mechanism on several benchmarks. "
    "Results show consistent improvements under the stated assumptions, and an ablation "
    "isolates the contribution of each component. "
)


def write_corpus(root: Path, n_docs: int, doc_chars: int) -> None:
    """``n_docs`` documents of about ``doc_chars`` characters, each with a ``MARK-<id>``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        mark = f"MARK-{i:05d}"
        head = f"Title: Paper {mark}\n\nThis paper ({mark}) studies a mechanism.\n\n"
        paras, size = [], len(head)
        while size < doc_chars:
            paras.append(FILLER * 3)
            size += len(paras[-1]) + 2
        (root / f"doc-{i:05d}.txt").write_text(head + "\n\n".join(paras) + "\n", encoding="utf-8")


def start_server(latency: float, rounds: int, timeout_s: float = 30.0) -> tuple[subprocess.Popen[str], int]:
    """Start the scripted server process; returns it and its port (after ``READY <port>``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env[ROUNDS_ENV] = str(rounds)
    cmd = [
        sys.executable,
        "-m",
        "tests.scripted_server",
        "--script",
        SCRIPT_REF,
        "--latency",
        str(latency),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return proc, int(line.split()[1])
            if not line:
                break
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"scripted server did not print READY within {timeout_s} s (exit code {proc.returncode})")


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``), or ``None``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def compose(corpus: Path, args: argparse.Namespace) -> Any:
    """The real composed Hydra config (like ``tests/conftest.py``) with the bench overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from inner.config import GenerateConfig, register_configs
    from inner.paths import PROJECT_ROOT

    register_configs()
    overrides = [
        f"task.corpus={corpus}",
        "progress=false",
        f"llm.endpoints.default.max_in_flight={args.in_flight}",
        "llm.endpoints.default.timeout_s=60",
        "llm.endpoints.default.max_retries=0",
        f"inner.max_concurrent_documents={args.concurrent_docs or 2 * args.in_flight}",
        f"inner.max_rounds={args.rounds}",
        *args.set,
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        dcfg = hydra_compose(config_name="generate", overrides=overrides)
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, GenerateConfig)
    return cfg


def steady_state(calls_log: Path, in_flight: int) -> dict[str, float | None]:
    """From ``calls.jsonl``: the completion rate over the middle 80 % of calls and the mean
    number of requests in flight (sum of latencies / span)."""
    rows = [json.loads(x) for x in calls_log.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r.get("error") is None and not r.get("cached")]
    if len(rows) < 20:
        return {"steady_calls_per_s": None, "mean_in_flight": None, "mean_latency_s": None}
    ts = sorted(r["t"] for r in rows)
    lo, hi = int(0.1 * len(ts)), int(0.9 * len(ts))
    span = ts[hi] - ts[lo]
    lat = [r["latency_s"] for r in rows]
    first_start = min(r["t"] - r["latency_s"] for r in rows)
    return {
        "steady_calls_per_s": (hi - lo) / span if span > 0 else None,
        "mean_in_flight": sum(lat) / (ts[-1] - first_start) if ts[-1] > first_start else None,
        "mean_latency_s": sum(lat) / len(lat),
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    from inner.engine.run import run_generate

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="autodata-bench-") as tmp:
        corpus, run_dir = Path(tmp) / "corpus", Path(tmp) / "run"
        write_corpus(corpus, args.docs, args.doc_chars)
        cfg = compose(corpus, args)
        proc, port = start_server(args.latency, args.rounds)
        from experiments.bench.sandbox_startup import SandboxCPU

        acct = SandboxCPU().join()  # the sandboxes started from now on (not the scripted server)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            load_before = os.getloadavg()
            srv_cpu0 = proc_cpu_s(proc.pid)
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            cpu0, t0 = time.process_time(), time.perf_counter()
            stats = asyncio.run(run_generate(cfg, run_dir, base_urls={"default": url}))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            srv_cpu1 = proc_cpu_s(proc.pid)
            load_after = os.getloadavg()
            time.sleep(0.3)  # the last sandboxes have exited
            sandbox_cpu = acct.seconds()
        finally:
            acct.leave()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        calls = sum(u["calls"] for u in stats["this_invocation"].values())
        cached = sum(u["cached_calls"] for u in stats["this_invocation"].values())
        failures = sum(u["failures"] for u in stats["this_invocation"].values())
        ceiling = args.in_flight / args.latency
        steady = steady_state(run_dir / "calls.jsonl", args.in_flight)
    res: dict[str, Any] = {
        "docs": args.docs,
        "rounds": args.rounds,
        "latency_s": args.latency,
        "in_flight": args.in_flight,
        "concurrent_docs": cfg.inner.max_concurrent_documents,
        "wall_s": round(wall, 3),
        "calls": calls,
        "expected_calls": args.docs * expected_calls_per_doc(args.rounds),
        "cached_calls": cached,
        "failures": failures,
        "accepted": stats["accepted"],
        "errored": stats["errored"],
        "crashed": stats["crashed"],
        "failure_modes": stats["failure_modes"],
        "ceiling_calls_per_s": round(ceiling, 2),
        "calls_per_s": round(calls / wall, 2),
        "fraction_of_ceiling": round(calls / wall / ceiling, 4),
        "steady_calls_per_s": _r(steady["steady_calls_per_s"], 2),
        "steady_fraction_of_ceiling": _r(
            steady["steady_calls_per_s"] / ceiling if steady["steady_calls_per_s"] else None, 4
        ),
        "mean_in_flight": _r(steady["mean_in_flight"], 2),
        "mean_request_latency_ms": _r(steady["mean_latency_s"] and steady["mean_latency_s"] * 1000, 1),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_call": round(1000 * cpu / calls, 3) if calls else None,
        "cpu_utilisation": round(cpu / wall, 3),
        "sandbox_mode": cfg.inner.sandbox_mode,
        "sandbox_cpu_s": _r(sandbox_cpu, 3),
        "sandbox_cpu_ms_per_doc": _r(sandbox_cpu and 1000 * sandbox_cpu / args.docs, 1),
        "server_cpu_ms_per_call": (
            round(1000 * (srv_cpu1 - srv_cpu0) / calls, 3)
            if calls and srv_cpu0 is not None and srv_cpu1 is not None
            else None
        ),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    return res


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def report(res: dict[str, Any]) -> str:
    lines = [
        f"inner-loop throughput: {res['docs']} docs x {res['rounds']} rounds, latency {res['latency_s'] * 1000:.0f} ms, "
        f"{res['in_flight']} in flight, {res['concurrent_docs']} documents in flight",
        f"  wall time          {res['wall_s']:.2f} s",
        f"  calls              {res['calls']} (expected {res['expected_calls']}; cached {res['cached_calls']}, "
        f"failures {res['failures']})",
        f"  accepted           {res['accepted']} / {res['docs']} documents (errored {res['errored']}, crashed {res['crashed']}); "
        f"rounds {res['failure_modes']}",
        f"  calls/s            {res['calls_per_s']:.1f} of ceiling {res['ceiling_calls_per_s']:.0f} "
        f"= {res['fraction_of_ceiling']:.3f}",
        f"  steady calls/s     {res['steady_calls_per_s']} = {res['steady_fraction_of_ceiling']} of ceiling "
        "(middle 80 % of calls)",
        f"  mean in flight     {res['mean_in_flight']} (mean request latency {res['mean_request_latency_ms']} ms)",
        f"  CPU per call       {res['cpu_ms_per_call']} ms (process CPU {res['cpu_s']:.2f} s, "
        f"{res['cpu_utilisation']:.2f} of one core)",
        f"  server CPU/call    {res['server_cpu_ms_per_call']} ms (separate process)",
        f"  sandbox CPU/doc    {res['sandbox_cpu_ms_per_doc']} ms (inner.sandbox_mode={res['sandbox_mode']}; every "
        "sandbox process, harness included)",
        f"  load average       before {res['loadavg_before']}, after {res['loadavg_after']} ({res['cpus']} CPUs)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=800, help="synthetic documents (default 800)")
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per call, seconds (default 0.2)")
    ap.add_argument("--in-flight", type=int, default=64, help="llm.endpoints.default.max_in_flight (default 64)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per document, the last one accepted (default 3; = inner.max_rounds)",
    )
    ap.add_argument(
        "--concurrent-docs",
        type=int,
        default=0,
        help="inner.max_concurrent_documents (default 2 x --in-flight)",
    )
    ap.add_argument(
        "--doc-chars",
        type=int,
        default=4000,
        help="characters per synthetic document (default 4000)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override (repeatable)",
    )
    ap.add_argument(
        "--profile",
        metavar="FILE",
        help="write a cProfile of the run to FILE (inflates CPU figures)",
    )
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args(argv)
    if args.docs < 1 or args.rounds < 1 or args.in_flight < 1 or args.latency <= 0:
        ap.error("--docs, --rounds and --in-flight must be >= 1 and --latency > 0")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    res = run_bench(args)
    print(report(res), flush=True)
    if args.json:
        print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
