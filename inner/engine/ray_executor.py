"""``executor=ray``: the documents of an evaluation spread over Ray Core actors.

Layout::

    driver (autodata-generate / autodata-evolve)          Ray actors (DocumentWorker x executor.workers)
      backend, probe, config.yaml, identity checks          own LLMClient (endpoints' max_in_flight split
      reads trajectories: finished documents skipped          over the workers), own response-cache segment,
      hands each pending document to the least busy         own calls-worker<i>.jsonl, own sandboxes
        actor (documents_per_worker at most each)  ---->    run_document(): the unchanged inner loop
      the one writer of dataset.jsonl and stats.json         (inner.engine.loop), which rewrites
        (examples derived from the returned trajectory)       trajectories/<doc>.json atomically after
      merges each document's LLM usage into its meters <----  every round; returns the final trajectory
                                                              and the document's usage

Records. A document runs on one actor at a time, and only that actor writes its
``trajectories/<doc>.json`` (atomically, as the local executor does), so a run killed anywhere
resumes the same way: finished documents are skipped, unfinished ones replayed from the response
cache with their recorded rounds reused. ``dataset.jsonl`` and ``stats.json`` have one writer, the
driver: a worker's example is not appended by the worker; the driver derives it from the accepted
trajectory it gets back (:func:`inner.engine.loop.make_example`, the same line the local
executor writes) and appends it, so lines never interleave. A driver killed between a worker's
final trajectory and that append loses nothing either: a finished accepted document found on
disk gets its example appended (a no-op when it is there). Each actor's sandboxes append to the
run's ``sandbox.log`` as local sandboxes do.

Failures. An actor that dies (killed, out of memory, its node lost) is restarted by Ray and the
documents it had in flight are sent again (``executor.max_retries`` times at most, Ray's
``max_restarts`` / ``max_task_retries``): each is redone from its trajectory on disk, a finished
one returned as it is, so it is never run or recorded twice. An exception raised inside a worker
(a :class:`~inner.sdk.errors.ConfigError`, :class:`~inner.sdk.errors.SandboxError`,
:class:`~inner.sdk.errors.HarnessError`, a full disk) is not retried: Ray retries actor tasks
only when the actor died, and the driver re-raises the worker's own exception, so the run stops
as the local executor's would. A document whose actor died more often than allowed stops the run
with :class:`~inner.engine.executor.ExecutorError` (a rerun redoes it).

What must be shared (README, "Running on Ray"): every actor reads and writes the run directory and
the response cache by path, so on several nodes they must be on a shared file system; the
corpus need not be (each document's text travels with its task), nor the harness (its files
travel once per actor as a Ray object, and are checked against its id). The endpoints' URLs must
be reachable from every node (``llm=local``'s server listens on the driver's loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from inner.config import ExecutorConfig, GenerateConfig, LLMConfig
from inner.engine.documents import Document
from inner.engine.executor import ExecutorError, merge_replica_counts
from inner.engine.harness import harness_id as make_harness_id
from inner.engine.loop import Engine, LoopObserver, make_example, run_document
from inner.engine.records import Example, RunWriter, Trajectory
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient, UsageMeter, track_usage
from inner.sandbox.files import read_member, scan_harness
from inner.sdk.errors import HarnessError

log = logging.getLogger(__name__)

#: name prefix of the actors (``<prefix>-<run token>-w<i>``, ``ray list actors`` shows them)
WORKER_PREFIX = "autodata-worker"
#: engines (run directory, harness, replicate) an actor keeps; older ones are rebuilt on demand
ENGINES_KEPT = 64
#: concurrent calls an actor accepts beyond its documents (``info``)
SPARE_CALLS = 4

#: a harness as it travels to the workers: ``(directory name, [(relative path, "file" | "link",
#: bytes | link target), ...])``
PackedHarness = tuple[str, list[tuple[str, str, bytes | str]]]


def pack_harness(harness_dir: Path, *, max_files: int, max_bytes: int) -> PackedHarness:
    """The members of ``harness_dir`` read once (:func:`inner.sandbox.files.scan_harness`: no link
    followed, the caps enforced), to be materialized by each worker.

    Raises:
        HarnessError: as :func:`inner.sandbox.files.scan_harness`.
    """
    out: list[tuple[str, str, bytes | str]] = []
    for e in scan_harness(harness_dir, max_files=max_files, max_bytes=max_bytes):
        out.append((e.rel, e.kind, e.target if e.kind == "link" else read_member(harness_dir, e)))
    return harness_dir.name, out


def unpack_harness(packed: PackedHarness, root: Path) -> Path:
    """Write a :func:`pack_harness` result under ``root``; returns the harness directory
    (``root/<its name>``, so its harness id is the original's)."""
    name, entries = packed
    dest = root / name
    dest.mkdir(parents=True)
    for rel, kind, data in entries:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "link":
            os.symlink(str(data), target)
        else:
            target.write_bytes(data)  # type: ignore[arg-type]
    return dest


def split_llm(llm: LLMConfig, workers: int) -> LLMConfig:
    """``llm`` with each endpoint's ``max_in_flight`` divided over ``workers`` (rounded up), so
    the endpoints' ceilings hold across all actors together."""
    endpoints = {
        name: dataclasses.replace(ep, max_in_flight=max(1, math.ceil(ep.max_in_flight / workers)))
        for name, ep in llm.endpoints.items()
    }
    return dataclasses.replace(llm, endpoints=endpoints)


class WorkerWriter(RunWriter):
    """A worker's view of a run directory: it rewrites the trajectories of the documents it runs
    (atomically, as :class:`RunWriter` does) and never touches ``dataset.jsonl``, whose one
    writer is the driver."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.traj_dir = self.run_dir / "trajectories"
        self.dataset_path = self.run_dir / "dataset.jsonl"
        self.traj_dir.mkdir(parents=True, exist_ok=True)
        self._example_ids: set[str] = set()

    def append_example(self, ex: Example) -> bool:
        """Nothing: the driver appends the example of the accepted trajectory it gets back."""
        return True


@ray.remote
class DocumentWorker:
    """One Ray actor: runs documents with the unchanged inner loop (:func:`inner.engine.loop.run_document`).

    Args:
        index: the actor's index (names its call log).
        llm: its LLM config (:func:`split_llm`).
        base_urls: endpoint name -> base URL.
        cache_root: the run's response cache (this actor appends its own segment).
        call_log: its ``calls-worker<i>.jsonl``.
    """

    def __init__(
        self, index: int, llm: LLMConfig, base_urls: Mapping[str, str | list[str]], cache_root: str, call_log: str
    ) -> None:
        self.index = index
        self.llm, self.base_urls = llm, base_urls
        self.cache_root, self.call_log = Path(cache_root), Path(call_log)
        self.client: LLMClient | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="autodata-ray-harness-"))
        self.harnesses: dict[str, Path] = {}
        self.harness_locks: dict[str, asyncio.Lock] = {}
        self.engines: OrderedDict[tuple[str, str, int], Engine] = OrderedDict()
        self.documents = 0

    def info(self) -> dict[str, Any]:
        """``{"index", "pid", "node", "documents"}``: who this actor is and how many documents it ran."""
        return {"index": self.index, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "documents": self.documents}  # fmt: skip

    def _client(self) -> LLMClient:
        if self.client is None:  # built inside the actor's event loop (a ConfigError reaches the driver typed)
            cache = ResponseCache(self.cache_root)
            self.client = LLMClient(self.llm, base_urls=self.base_urls, cache=cache, call_log=self.call_log)
        return self.client

    async def _harness(self, hid: str, ref: Any) -> Path:
        lock = self.harness_locks.setdefault(hid, asyncio.Lock())
        async with lock:
            if hid not in self.harnesses:
                packed = await ref
                root = Path(tempfile.mkdtemp(dir=self.tmp))
                got = make_harness_id(unpack_harness(packed, root))
                if got != hid:
                    raise HarnessError(f"the harness {hid} arrived at Ray worker {self.index} as {got}")
                self.harnesses[hid] = root / packed[0]
        return self.harnesses[hid]

    def _engine(self, cfg: GenerateConfig, run_dir: str, harness_dir: Path, hid: str, replicate: int) -> Engine:
        key = (run_dir, hid, replicate)
        eng = self.engines.get(key)
        if eng is None:
            writer = WorkerWriter(Path(run_dir))
            eng = Engine(cfg, self._client(), harness_dir, hid, writer, LoopObserver(), replicate=replicate)
            self.engines[key] = eng
            while len(self.engines) > ENGINES_KEPT:
                self.engines.popitem(last=False)
        self.engines.move_to_end(key)
        return eng

    async def run_document(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one document (or return it as it is if it finished before: a retry after this
        actor's predecessor died with the document done).

        Args:
            task: ``cfg``, ``run_dir`` (absolute), ``harness_id``, ``harness`` (a one-element
                list holding the :func:`pack_harness` object ref), ``doc`` (with its text),
                ``replicate``.

        Returns:
            ``{"trajectory": JSON, "usage": {role: counters}, "live_completion_tokens": int,
            "worker": index, "pid": int, "replicas": this actor's client's replica counts so far}``.
        """
        harness_dir = await self._harness(task["harness_id"], task["harness"][0])
        eng = self._engine(task["cfg"], task["run_dir"], harness_dir, task["harness_id"], task["replicate"])
        doc: Document = task["doc"]
        prev = eng.writer.load_trajectory(doc.doc_id)
        with track_usage(UsageMeter()) as meter:
            traj = prev if prev is not None and prev.finished else await run_document(eng, doc, prev)
        self.documents += 1
        return {
            "trajectory": traj.model_dump_json(),
            "usage": meter.as_dict(),
            "live_completion_tokens": meter.live_completion_tokens,
            "worker": self.index,
            "pid": os.getpid(),
            "replicas": self._client().replica_counts(),  # since this actor's client was made
        }

    async def close(self) -> None:
        """Close the LLM client (and its call log) and remove the materialized harnesses."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        shutil.rmtree(self.tmp, ignore_errors=True)


class RayExecutor:
    """``executor=ray`` (see the module docstring). Ray is started (or joined) and the actors
    created on the first document that needs running, so a run with nothing left to do starts
    nothing. Several evaluations may run through one executor at once (the meta loop's
    iterations in flight): they share the actors and their ``documents_per_worker`` slots.

    Args:
        cfg: ``executor``.
        llm, base_urls, cache_root, log_dir, max_concurrent_documents: as
            :func:`inner.engine.executor.open_executor`.
    """

    def __init__(
        self,
        cfg: ExecutorConfig,
        *,
        llm: LLMConfig,
        base_urls: Mapping[str, str | list[str]],
        cache_root: Path,
        log_dir: Path,
        max_concurrent_documents: int,
    ) -> None:
        self.cfg = cfg
        self.llm = split_llm(llm, cfg.workers)
        self.base_urls = dict(base_urls)
        self.cache_root = Path(cache_root).resolve()
        self.log_dir = Path(log_dir).resolve()
        self.per_worker = cfg.documents_per_worker or max(1, math.ceil(max_concurrent_documents / cfg.workers))
        self.token = uuid.uuid4().hex[:8]
        self.workers: list[Any] = []
        self.load: list[int] = []
        self.harness_refs: dict[str, Any] = {}
        self.started_ray = False
        self._slots: asyncio.Semaphore | None = None
        #: the latest replica counts of each actor process ((index, pid): a restarted actor is a new one)
        self._replicas: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {}
        self._start_lock: asyncio.Lock | None = None

    @property
    def capacity(self) -> int:
        """Documents in flight at once over all actors."""
        return self.per_worker * self.cfg.workers

    async def _start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:  # the first document starts Ray and the actors; the others wait
            if not self.workers:
                await self._start_workers()

    async def _start_workers(self) -> None:
        if not ray.is_initialized():
            local = self.cfg.address is None and not os.environ.get("RAY_ADDRESS")
            kw: dict[str, Any] = {"address": self.cfg.address, "include_dashboard": False}
            if local:
                kw["num_cpus"] = self.cfg.num_cpus
            try:
                ray.init(**kw)
            except Exception as exc:  # noqa: BLE001 - any failure to start or join is the same config problem
                where = self.cfg.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
                raise ExecutorError(
                    f"executor=ray could not start or join {where}: {type(exc).__name__}: {exc}"
                ) from exc
            self.started_ray = True
        opts = {"max_restarts": self.cfg.max_retries, "max_task_retries": self.cfg.max_retries,
                "max_concurrency": self.per_worker + SPARE_CALLS, "num_cpus": self.cfg.cpus_per_worker}  # fmt: skip
        for i in range(self.cfg.workers):
            log_path = self.log_dir / f"calls-worker{i}.jsonl"
            handle = DocumentWorker.options(name=f"{WORKER_PREFIX}-{self.token}-w{i}", **opts).remote(
                i, self.llm, self.base_urls, str(self.cache_root), str(log_path)
            )
            self.workers.append(handle)
            self.load.append(0)
        try:
            infos = await asyncio.gather(*(w.info.remote() for w in self.workers))
        except ray.exceptions.RayError as exc:
            raise ExecutorError(f"executor=ray: the Ray actors could not start: {type(exc).__name__}: {exc}") from exc
        log.info(
            "executor=ray: %d actors (%d documents each) on %d node(s)",
            len(infos), self.per_worker, len({i["node"] for i in infos}),
        )  # fmt: skip

    def _harness_ref(self, eng: Engine) -> Any:
        ref = self.harness_refs.get(eng.harness_id)
        if ref is None:
            inner = eng.cfg.inner
            packed = pack_harness(
                eng.harness_dir, max_files=inner.harness_max_files, max_bytes=inner.harness_max_mb << 20
            )
            ref = self.harness_refs[eng.harness_id] = ray.put(packed)
        return ref

    async def run_documents(
        self,
        eng: Engine,
        docs: Iterable[Document],
        on_finished: Callable[[Document, Trajectory], None] | None = None,
    ) -> None:
        """As :func:`inner.engine.loop.run_documents`, the pending documents running on the
        actors (see the module docstring).

        Raises:
            ExecutorError: Ray could not be started or joined, or a document's actor died more
                than ``executor.max_retries`` times.
            Whatever a worker raised (ConfigError, SandboxError, HarnessError, StorageError):
                re-raised as it is, not retried.
        """
        pending = iter(docs)
        run_dir = str(eng.writer.run_dir.resolve())

        async def one(doc: Document) -> None:
            prev = eng.writer.load_trajectory(doc.doc_id)
            if prev is not None and prev.finished:
                traj = prev
            else:
                traj = await self._remote(eng, doc, run_dir)
                eng.observer.document_finished(traj)
            if traj.status == "accepted":  # the driver is the one writer of dataset.jsonl
                rec = next((r for r in traj.rounds if r.accepted), None)
                if rec is not None:
                    eng.writer.append_example(make_example(eng, doc, rec))  # a no-op if already there
            if on_finished is not None:
                on_finished(doc, traj)

        async def puller() -> None:
            for d in pending:  # one shared iterator: each document is taken once
                await one(d)

        tasks = [asyncio.create_task(puller()) for _ in range(self.capacity)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _remote(self, eng: Engine, doc: Document, run_dir: str) -> Trajectory:
        """One document on the least busy actor; its usage merged into ``eng.client``'s meters."""
        await self._start()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.capacity)
        task = {
            "cfg": eng.cfg, "run_dir": run_dir, "harness_id": eng.harness_id, "harness": [self._harness_ref(eng)],
            "doc": Document(doc.doc_id, doc.path, doc.title, text=doc.text), "replicate": eng.replicate,
        }  # fmt: skip
        async with self._slots:
            i = min(range(len(self.workers)), key=self.load.__getitem__)
            self.load[i] += 1
            try:
                out = await self.workers[i].run_document.remote(task)
            except ray.exceptions.RayTaskError as exc:  # raised by our code in the worker: typed, not retried
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from exc
                raise ExecutorError(f"document {doc.doc_id} failed on Ray worker {i}: {exc}") from exc
            except ray.exceptions.RayError as exc:  # the actor died (more often than it may be restarted)
                raise ExecutorError(
                    f"document {doc.doc_id}: its Ray worker died and it could not be redone within "
                    f"executor.max_retries={self.cfg.max_retries} ({type(exc).__name__}: {str(exc)[:500]}). "
                    "Finished documents are on disk; rerun the same command to redo the rest"
                ) from exc
            finally:
                self.load[i] -= 1
        eng.client.record_usage(out["usage"], out["live_completion_tokens"])
        self._replicas[(out["worker"], out["pid"])] = out["replicas"]
        return Trajectory.model_validate_json(out["trajectory"])

    def replica_counts(self) -> dict[str, list[dict[str, Any]]]:
        """The actors' replica counts (each actor process's latest, merged: requests since the
        actors started, over every evaluation run through this executor)."""
        return merge_replica_counts(*self._replicas.values())

    def close(self) -> None:
        """Close and kill the actors; stop Ray if this executor started it."""
        if self.workers:
            with contextlib.suppress(Exception):
                ray.get([w.close.remote() for w in self.workers], timeout=10)
            for w in self.workers:
                with contextlib.suppress(Exception):
                    ray.kill(w)
            self.workers, self.load = [], []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
