"""Memory benchmark: does a generation run's memory stay flat as documents finish?

Peak RSS of ``inner.engine.run.run_generate`` over N synthetic documents (default 2,000 and 20,000)
at 256 requests in flight, each N in a fresh Python process, against the scripted
OpenAI-compatible server (``tests/scripted_server.py``) run as a separate process exactly as
``experiments/bench/inner_throughput.py`` does (same scenario script; one accepted round per
document by default). The goal (issue 10): peak RSS at 20,000 documents within 20 % of the
peak at 2,000.

Printed per N: peak RSS (``ru_maxrss``), RSS when 10 % / 50 % / 100 % of the documents had
finished, the slope (KiB per finished document, between 10 % and 100 %), wall time, calls.

``--sandbox``:

- ``real``: every document in its sandbox, as shipped (``inner.sandbox_mode``: forked by the
  run's fork server by default, or a fresh bubblewrap sandbox with ``--set
  inner.sandbox_mode=fresh``, whose start-up costs ~0.2-0.4 s of CPU per document). The sandbox
  processes are not in this RSS.
- ``inprocess`` (default): the real baseline harness and the real sandbox protocol
  (``inner.sdk.child.Agent`` speaking JSON messages to ``inner.engine.loop.DocumentSession``),
  but run as a task in this process instead of a bubblewrap child. Everything the parent
  keeps per document is the same; what is missing is the child process and its pipes (freed
  when each document ends). The harness's own objects are in this RSS (they die with it).

``--trace`` adds tracemalloc snapshots (after a full ``gc.collect()``, so they show what is
kept alive) at 20 % and 100 % of the documents and prints the 15 allocation sites that grew
most in between (slow: about 3x).

Run from the repository root::

    .venv/bin/python experiments/bench/memory.py                       # 2,000 and 20,000 documents
    .venv/bin/python experiments/bench/memory.py --docs 2000 --trace   # where does it grow?
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.bench.inner_throughput import start_server, write_corpus  # noqa: E402


def rss_kib() -> int:
    """Resident set size of this process in KiB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


class InProcessSandbox:
    """Bench stand-in for :class:`inner.sandbox.process.SandboxProcess`: the harness runs through the
    real sandbox protocol (JSON messages, :class:`inner.sdk.child.Agent`) as a task here."""

    _module: Any = None

    def __init__(self, harness_dir: Path, **_: Any) -> None:
        from inner.sdk.child import load_harness_module

        if InProcessSandbox._module is None:
            InProcessSandbox._module = load_harness_module(Path(harness_dir))
        self.out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.proc = None
        self.task: asyncio.Task[None] | None = None
        self.conn: Any = None

    async def start(self, **_: Any) -> dict[str, Any]:
        from inner.sdk.child import _Connection

        queue = self.out

        class Pipe:  # what the child writes to its stdout, parsed as the parent would
            def write(self, line: str) -> None:
                queue.put_nowait(json.loads(line))

            def flush(self) -> None: ...

        self.conn = _Connection(Pipe())
        return {"ok": True}

    async def send(self, msg: dict[str, Any]) -> None:
        from inner.sdk.child import Agent, DocumentView

        msg = json.loads(json.dumps(msg))  # nothing shared with the parent, as over a pipe
        if msg["t"] == "run" and self.task is None:
            d = msg["doc"]
            agent = Agent(
                doc=DocumentView(d["doc_id"], d["title"], d["text"]), domain=msg["domain"],
                max_rounds=msg["max_rounds"], budget_limits=msg["budget"], doc_chars=msg.get("doc_chars", {}),
                _conn=self.conn,
            )  # fmt: skip

            async def run() -> None:
                try:
                    await self._module.run(agent)
                    self.conn.send({"t": "done", "ok": True})
                except Exception as exc:  # reported like the child does
                    self.conn.send({"t": "done", "ok": False, "error": repr(exc)})

            self.task = asyncio.create_task(run())
        elif msg["t"] == "resp":
            self.conn.resolve(msg)

    async def readline(self) -> dict[str, Any] | None:
        return await self.out.get()

    def exit_description(self) -> str:
        return "exited"

    async def kill(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def compose(corpus: Path, args: argparse.Namespace) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from inner.config import GenerateConfig, register_configs
    from inner.paths import PROJECT_ROOT

    register_configs()
    overrides = [
        f"task.corpus={corpus}", "progress=false", f"llm.endpoints.default.max_in_flight={args.in_flight}",
        "llm.endpoints.default.timeout_s=120", "llm.endpoints.default.max_retries=0",
        f"inner.max_concurrent_documents={args.concurrent_docs or args.in_flight}", "inner.max_rounds=1",
        f"inner.n_weak={args.attempts}", f"inner.n_strong={args.attempts}",
        # the in-process stand-in replaces the fresh sandbox class (inner.engine.loop.SandboxProcess)
        *(["inner.sandbox_mode=fresh"] if args.sandbox == "inprocess" else []), *args.set,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        dcfg = hydra_compose(config_name="generate", overrides=overrides)
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, GenerateConfig)
    return cfg


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``args.docs[0]`` documents in this process; returns the figures."""
    import logging
    import tracemalloc

    import inner.engine.loop
    from inner.engine.loop import LoopObserver
    from inner.engine.run import run_generate

    logging.basicConfig(level=logging.WARNING)
    n = args.docs[0]
    if args.sandbox == "inprocess":
        inner.engine.loop.SandboxProcess = InProcessSandbox  # type: ignore[misc,assignment]
    marks = {max(1, n // 10): "rss_10pct_kib", max(1, n // 2): "rss_50pct_kib", n: "rss_100pct_kib"}
    res: dict[str, Any] = {"docs": n, "sandbox": args.sandbox, "in_flight": args.in_flight}
    snaps: dict[str, Any] = {}
    if args.trace:
        tracemalloc.start(12)

    class Counter(LoopObserver):
        done = 0

        def __enter__(self) -> Counter:
            return self

        def __exit__(self, *exc: object) -> None: ...

        def document_finished(self, traj: Any) -> None:
            Counter.done += 1
            if Counter.done in marks:
                res[marks[Counter.done]] = rss_kib()
            if args.trace and Counter.done in (max(1, n // 5), n):
                gc.collect()  # live objects only, not cyclic garbage awaiting a collection
                snaps[str(Counter.done)] = tracemalloc.take_snapshot()

    peak_sampled = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak_sampled[0] = max(peak_sampled[0], rss_kib())

    with tempfile.TemporaryDirectory(prefix="autodata-mem-") as tmp:
        corpus, run_dir = Path(tmp) / "corpus", Path(tmp) / "run"
        write_corpus(corpus, n, args.doc_chars)
        cfg = compose(corpus, args)
        proc, port = start_server(args.latency, 1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            res["rss_start_kib"] = rss_kib()
            t0 = time.perf_counter()
            stats = asyncio.run(
                run_generate(cfg, run_dir, base_urls={"default": f"http://127.0.0.1:{port}/v1"},
                             observer_factory=lambda **kw: Counter())
            )  # fmt: skip
            res["wall_s"] = round(time.perf_counter() - t0, 1)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(10)
    res["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["peak_rss_sampled_kib"] = peak_sampled[0]
    res["calls"] = sum(u["calls"] for u in stats["this_invocation"].values())
    res["accepted"], res["errored"] = stats["accepted"], stats["errored"]
    lo, hi = res.get("rss_10pct_kib"), res.get("rss_100pct_kib")
    res["kib_per_doc"] = round((hi - lo) / (n - n // 10), 3) if lo and hi and n > 10 else None
    if args.trace and len(snaps) == 2:
        first, last = snaps[str(max(1, n // 5))], snaps[str(n)]
        top = last.compare_to(first, "traceback")[:15]
        res["growth_sites"] = [
            {"size_diff_kib": round(s.size_diff / 1024, 1), "count_diff": s.count_diff,
             "where": [f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in s.traceback[-6:]]}
            for s in top
        ]  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[2000, 20000], help="document counts (default 2000 20000)")
    ap.add_argument("--in-flight", type=int, default=256, help="llm.endpoints.default.max_in_flight (default 256)")
    ap.add_argument(
        "--concurrent-docs", type=int, default=0, help="inner.max_concurrent_documents (default = --in-flight)"
    )
    ap.add_argument(
        "--attempts", type=int, default=3, help="inner.n_weak = inner.n_strong (default 3: 14 calls/document)"
    )
    ap.add_argument("--latency", type=float, default=0.05, help="server latency per call, seconds (default 0.05)")
    ap.add_argument("--doc-chars", type=int, default=2000, help="characters per synthetic document (default 2000)")
    ap.add_argument("--sandbox", choices=("inprocess", "real"), default="inprocess")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: the 15 sites that grew most (slow)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return []
    results = []
    for n in args.docs:
        cmd = [sys.executable, __file__, "--child", "--docs", str(n), "--in-flight", str(args.in_flight),
               "--concurrent-docs", str(args.concurrent_docs), "--attempts", str(args.attempts),
               "--latency", str(args.latency), "--doc-chars", str(args.doc_chars), "--sandbox", args.sandbox,
               *(["--trace"] if args.trace else []), *[x for s in args.set for x in ("--set", s)]]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"run with {n} documents failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        res = json.loads(line[len("RESULT ") :])
        results.append(res)
        print(
            f"{n:>6} docs ({res['sandbox']}): peak RSS {res['peak_rss_kib'] / 1024:.1f} MiB; RSS at 10/50/100 % "
            f"{res.get('rss_10pct_kib', 0) / 1024:.1f} / {res.get('rss_50pct_kib', 0) / 1024:.1f} / "
            f"{res.get('rss_100pct_kib', 0) / 1024:.1f} MiB; {res['kib_per_doc']} KiB per document; "
            f"{res['calls']} calls, {res['accepted']} accepted, {res['errored']} errored, {res['wall_s']} s",
            flush=True,
        )
        for site in res.get("growth_sites", []):
            print(
                f"    +{site['size_diff_kib']:>9.1f} KiB  +{site['count_diff']:>7} blocks  {' <- '.join(reversed(site['where']))}"
            )
        print(json.dumps(res), flush=True)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(
            f"peak RSS ratio {b['docs']} / {a['docs']} docs: {b['peak_rss_kib'] / a['peak_rss_kib']:.3f} (goal <= 1.20)"
        )
    return results


if __name__ == "__main__":
    main()
