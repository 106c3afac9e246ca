"""Sandbox start-up benchmark: CPU and wall time per document until the harness is ready.

Starts ``--docs`` sandboxes one after another on a harness (default ``harnesses/baseline``), in
each mode of ``inner.sandbox_mode`` alternately (``fresh``, ``fork``, ``fresh``, ... so that a
change of machine load hits both), waits for the ``ready`` line (the harness imported) and
kills the sandbox, as :class:`inner.engine.loop.DocumentSession` does at the end of a document.

CPU is counted for every process of the sandbox, from the request until ``ready``, including
the kill and reaping: this process moves itself into a new cgroup v1 ``cpuacct`` group
(:class:`SandboxCPU`), which every process it starts inherits (bubblewrap, the fork server, the
documents: the sandbox's own ``pids``/``memory`` groups are other hierarchies), and the CPU of
this process (``RUSAGE_SELF``) is subtracted from the group's ``cpuacct.usage``. (Resource usage
of reaped children misses most of it: a sandbox killed at the end of its document is never
waited for by bubblewrap.) In ``fork`` mode the server's own start, once per run, is reported
separately.

Run from the repository root::

    .venv/bin/python experiments/bench/sandbox_startup.py --docs 40 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class SandboxCPU:
    """CPU seconds of every process this one starts from now on (not of itself): a cgroup v1
    ``cpuacct`` group joined by this process. ``seconds()`` is ``None`` where the hierarchy
    is missing or not writable. Processes started before :meth:`join` are not counted."""

    def __init__(self) -> None:
        self.path: Path | None = CPUACCT / f"autodata-bench-{os.getpid()}"
        self._base = 0.0

    def join(self) -> SandboxCPU:
        try:
            assert self.path is not None
            self.path.mkdir(exist_ok=True)
            (self.path / "cgroup.procs").write_text(str(os.getpid()))
        except (OSError, AssertionError):
            self.path = None
        self._base = self._raw() or 0.0
        return self

    def _raw(self) -> float | None:
        if self.path is None:
            return None
        r = resource.getrusage(resource.RUSAGE_SELF)
        return int((self.path / "cpuacct.usage").read_text()) / 1e9 - (r.ru_utime + r.ru_stime)

    def seconds(self) -> float | None:
        """CPU seconds of the other processes in the group since :meth:`join`."""
        raw = self._raw()
        return None if raw is None else raw - self._base

    def leave(self) -> None:
        if self.path is not None:
            (CPUACCT / "cgroup.procs").write_text(str(os.getpid()))
            for _ in range(50):  # processes still exiting keep it busy a moment
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


async def _one(sb: Any) -> float:
    t0 = time.perf_counter()
    ready = await sb.start()
    wall = time.perf_counter() - t0
    await sb.kill()
    if not ready.get("ok"):
        raise RuntimeError(f"the sandbox did not start: {ready}")
    return wall


async def bench_fresh(harness: Path, docs: int) -> dict[str, float]:
    from inner.sandbox.process import SandboxProcess

    acct = SandboxCPU().join()
    try:
        walls = [await _one(SandboxProcess(harness)) for _ in range(docs)]
        await asyncio.sleep(0.3)  # the last sandbox's processes have exited
        cpu = acct.seconds()
    finally:
        acct.leave()
    return {"cpu_ms_per_doc": _ms(cpu, docs), "wall_ms_per_doc": 1000 * sum(walls) / docs}


def _ms(cpu: float | None, docs: int) -> float:
    return float("nan") if cpu is None else 1000 * cpu / docs


async def bench_fork(harness: Path, docs: int) -> dict[str, float]:
    from inner.sandbox.forkserver import ForkedSandbox, ForkServer

    acct = SandboxCPU().join()
    try:
        server = ForkServer(harness)
        t0 = time.perf_counter()
        await server.start()  # before the first document, as inner.engine.loop.run_documents does
        start_wall = time.perf_counter() - t0
        cpu0 = acct.seconds()
        walls = [await _one(ForkedSandbox(server)) for _ in range(docs)]
        await asyncio.sleep(0.3)  # the last document's processes have exited
        cpu1 = acct.seconds()
        await server.aclose()
    finally:
        acct.leave()
    return {
        "cpu_ms_per_doc": _ms(None if cpu0 is None or cpu1 is None else cpu1 - cpu0, docs),
        "wall_ms_per_doc": 1000 * sum(walls) / docs,
        "server_start_cpu_ms": _ms(cpu0, 1),
        "server_start_wall_ms": 1000 * start_wall,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=40, help="sandboxes per mode and repeat (default 40)")
    ap.add_argument("--repeats", type=int, default=2, help="alternations fresh/fork (default 2)")
    ap.add_argument("--harness", default=str(ROOT / "harnesses" / "baseline"), help="harness directory")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    harness = Path(args.harness).resolve()
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for mode, fn in (("fresh", bench_fresh), ("fork", bench_fork)):
            load = os.getloadavg()[0]
            res = asyncio.run(fn(harness, args.docs))
            runs.append({"mode": mode, "repeat": rep, "docs": args.docs, "load_before": round(load, 2),
                         **{k: round(v, 2) for k, v in res.items()}})  # fmt: skip
            r = runs[-1]
            extra = (
                f"; server start {r['server_start_cpu_ms']:.0f} ms CPU, {r['server_start_wall_ms']:.0f} ms wall"
                if mode == "fork"
                else ""
            )
            print(
                f"{mode:>5} x{args.docs}: {r['cpu_ms_per_doc']:7.1f} ms CPU/doc, {r['wall_ms_per_doc']:7.1f} ms wall/doc "
                f"(load {r['load_before']}){extra}",
                flush=True,
            )
    out = {"harness": harness.name, "cpus": os.cpu_count(), "runs": runs}
    if args.json:
        print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
