"""``run_generate``: one generation run into one run directory (resumable)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from inner.config import GenerateConfig
from inner.engine.documents import Document, load_documents
from inner.engine.executor import LOCAL, Executor, merge_replica_counts, open_executor
from inner.engine.harness import harness_id as make_harness_id
from inner.engine.harness import resolve_harness_dir
from inner.engine.loop import Engine, LoopObserver
from inner.engine.records import RunWriter, Trajectory
from inner.engine.stats import StatsAccumulator
from inner.entrypoint import check_open_files
from inner.evaluator import FROZEN_DIR, frozen_files
from inner.io import atomic_write_text, sweep_stale_temps
from inner.llm.backends import start_backend
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient, UsageMeter, track_usage
from inner.llm.probe import probe_endpoints
from inner.sandbox.files import copy_harness
from inner.sandbox.process import bwrap_path, validate_harness
from inner.sdk.errors import ConfigError, HarnessError
from inner.tracking import Tracker, build_tracker

log = logging.getLogger(__name__)

#: What must not change when a run directory is resumed: mixing records made with other
#: values in one dataset would make them incomparable. Concurrency, backend and endpoint URLs
#: may change (they do not change what is generated).
IDENTITY_KEYS = (
    "method", "harness_id", "gate", "rubric", "inner", "task_verifiable", "models", "roles", "seed", "frozen",
)  # fmt: skip


#: inner settings that change how a run goes, never what it yields: left out of both identities
#: (how a sandbox starts, ``inner.sandbox_mode``, seals the harness the same way either way)
INNER_NOT_IDENTITY = ("max_concurrent_documents", "harness_max_files", "harness_max_mb", "sandbox_mode")


def evaluator_identity(cfg: GenerateConfig) -> dict[str, Any]:
    """Everything that decides what an evaluation of a harness yields, except the harness and
    the documents: the evaluator (quality check, solvers, judge: their models and sampling;
    attempts; open/closed book; gate; rubric policy), the task's answer checking and domain,
    the harness roles' models and sampling, the budgets and the seed, and the frozen
    evaluator's files (:func:`frozen_identity`). Concurrency, URLs and timeouts are left out
    (they do not change what is generated).

    Returns:
        A JSON-able dict; :func:`identity_hash` of it keys stored evaluations.
    """
    inner = asdict(cfg.inner)
    for key in INNER_NOT_IDENTITY:
        inner.pop(key)
    roles = {}
    for name in ("challenger", "main_agent", "self_check", "quality_verifier", "weak_solver", "strong_solver", "judge"):
        role = cfg.llm.role(name)
        roles[name] = {**asdict(role), "model": cfg.llm.endpoints[role.endpoint].model}
        roles[name].pop("endpoint")
    return {
        "gate": asdict(cfg.gate),
        "rubric": asdict(cfg.rubric),
        "inner": inner,
        "task": {"name": cfg.task.name, "verifiable": cfg.task.verifiable, "domain": cfg.task.domain},
        "roles": roles,
        "seed": cfg.llm.seed,
        "frozen": frozen_identity(),
    }


def frozen_identity() -> dict[str, str]:
    """The frozen evaluator's code and prompts: ``{path relative to inner/evaluator/: 12 hex of
    its sha256}`` for every file of :func:`inner.evaluator.frozen_files`. A change to any of them
    (``gate.py``, a prompt) changes every evaluation's identity, and :func:`identity_diff` names
    the file (``frozen.gate.py``)."""
    return {str(p.relative_to(FROZEN_DIR)): hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in frozen_files()}


def identity_hash(identity: Any) -> str:
    """12 hex of a sha256 over the canonical JSON of ``identity``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def identity_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identity dicts (``gate.min_gap``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += identity_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")] if old != new else []


def _identity(cfg: GenerateConfig, harness_id: str) -> dict[str, Any]:
    inner = asdict(cfg.inner)
    for key in INNER_NOT_IDENTITY:
        inner.pop(key)
    return {
        "method": cfg.method,
        "harness_id": harness_id,
        "gate": asdict(cfg.gate),
        "rubric": asdict(cfg.rubric),
        "inner": inner,
        "task_verifiable": cfg.task.verifiable,
        "models": {name: ep.model for name, ep in cfg.llm.endpoints.items()},
        "roles": asdict(cfg.llm.roles),
        "seed": cfg.llm.seed,
        "frozen": frozen_identity(),
    }


def write_run_config(run_dir: Path, cfg: GenerateConfig, harness_id: str) -> None:
    """Write ``config.yaml`` (resolved config + harness id); refuse to resume a run directory
    that was made with a different method, harness, gate, rubric policy, inner-loop config,
    models, role sampling or seed (:data:`IDENTITY_KEYS`). A run directory in which no
    document has finished and none has recorded a round holds no result to keep consistent
    (nothing of it would be reused), so it can be rerun with a corrected endpoint or model (a
    run that failed wholly on a wrong model name).

    Raises:
        ConfigError: the run directory's earlier ``config.yaml`` disagrees (the message says
            on what, and to choose a new ``hydra.run.dir``).
    """
    path = run_dir / "config.yaml"
    ident = _identity(cfg, harness_id)
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        old_ident = old.get("identity", {})
        diff = [k for k in IDENTITY_KEYS if k in old_ident and old_ident[k] != ident[k]]
        if diff and not any(t.finished or t.rounds for t in RunWriter(run_dir, readonly=True).iter_trajectories()):
            log.warning(
                "no document of %s had finished or recorded a round: its identity is replaced (%s changed)",
                run_dir, ", ".join(diff),
            )  # fmt: skip
        elif diff:
            if "frozen" in diff:
                changed = identity_diff(old_ident["frozen"], ident["frozen"], "inner/evaluator/")
                raise ConfigError(
                    f"run directory {run_dir} was made under different frozen evaluator code: "
                    f"{', '.join(changed)} changed; resume it with the same code or choose a new hydra.run.dir"
                )
            raise ConfigError(
                f"run directory {run_dir} was made with a different {', '.join(diff)} "
                f"(e.g. {diff[0]}={old_ident[diff[0]]!r}); resume it with the same settings or "
                "choose a new hydra.run.dir"
            )
    doc = {"identity": ident, "config": asdict(cfg)}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


async def run_generate(
    cfg: GenerateConfig,
    run_dir: Path,
    *,
    observer_factory: Any = None,
    base_urls: Mapping[str, str | list[str]] | None = None,
) -> dict[str, Any]:
    """Generate data for every document of ``cfg.task`` into ``run_dir``.

    Documents finished in an earlier run into the same directory are skipped; unfinished ones
    are redone, replaying cached LLM calls. Starts the configured backend unless
    ``base_urls`` is given (tests pass the scripted server's URL).

    Args:
        cfg: the run config.
        run_dir: the run directory (Hydra's output dir).
        observer_factory: ``f(total=, done=, accepted=, usage=) -> LoopObserver`` context
            manager for progress display; ``None`` for none.
        base_urls: endpoint name -> base URL (or a list of replica URLs), bypassing the backend.

    Returns:
        The ``stats.json`` dictionary (also written to disk).

    Raises:
        ConfigError, DocumentError, HarnessError, BackendError: before any LLM call.
    """
    with tempfile.TemporaryDirectory(prefix="autodata-harness-") as snap:
        # the run executes a copy taken now, and its id is the copy's: editing the harness
        # directory mid-run cannot change the code behind the recorded harness id
        src = harness_dir_for(cfg)
        harness_dir = copy_harness(
            src, Path(snap) / src.name, max_files=cfg.inner.harness_max_files, max_bytes=cfg.inner.harness_max_mb << 20
        )
        return await _generate(cfg, Path(run_dir), harness_dir, observer_factory, base_urls)


async def _generate(
    cfg: GenerateConfig,
    run_dir: Path,
    harness_dir: Path,
    observer_factory: Any,
    base_urls: Mapping[str, str | list[str]] | None,
) -> dict[str, Any]:
    """:func:`run_generate` with the harness snapshot in ``harness_dir``."""
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(run_dir)  # what a killed run left half-written
    docs = load_documents(cfg.task)
    harness_id = make_harness_id(harness_dir)
    bwrap_path()  # no sandbox, no run: fail before any LLM call
    check_open_files(
        documents=cfg.inner.max_concurrent_documents,
        connections=cfg.llm.max_connections(),
        what=f"inner.max_concurrent_documents={cfg.inner.max_concurrent_documents}",
    )
    await check_harness_loads(harness_dir, cfg, name=harness_dir.name)
    write_run_config(run_dir, cfg, harness_id)
    writer = RunWriter(run_dir)
    done = accepted = 0
    for d in docs:  # counted one at a time: nothing per document is held
        t = writer.load_trajectory(d.doc_id)
        done += t is not None and t.finished
        accepted += t is not None and t.status == "accepted"
    log.info(
        "%s with harness %s on %d documents (%d finished earlier) -> %s",
        cfg.method, harness_id, len(docs), done, run_dir,
    )  # fmt: skip
    cache = ResponseCache(Path(cfg.llm.cache_dir) if cfg.llm.cache_dir else run_dir / "llm_cache")
    if base_urls is not None:
        backend: Any = contextlib.nullcontext(base_urls)
    elif done == len(docs):  # nothing to do: do not start a server
        backend = contextlib.nullcontext(_unused_urls(cfg))
    else:
        backend = start_backend(cfg.llm, log_dir=run_dir)
    with backend as urls:
        if done < len(docs):  # one clear error up front, not a "Connection error" per document
            await asyncio.to_thread(probe_endpoints, cfg.llm, urls)
        client = LLMClient(cfg.llm, base_urls=urls, cache=cache, call_log=run_dir / "calls.jsonl")
        observer = (
            observer_factory(total=len(docs), done=done, accepted=accepted, usage=client.usage)
            if observer_factory
            else contextlib.nullcontext(LoopObserver())
        )
        tracker = build_tracker(cfg.logger, run_dir=run_dir, config=asdict(cfg), job="generate")
        executor = open_executor(
            cfg.executor, llm=cfg.llm, base_urls=urls, cache_root=cache.root, log_dir=run_dir,
            max_concurrent_documents=cfg.inner.max_concurrent_documents,
        )  # fmt: skip
        try:
            async with executor as ex:
                with observer as obs, throughput_gc():
                    ticker = asyncio.create_task(_tick(obs))
                    try:
                        _, stats = await evaluate_harness(
                            run_dir, cfg=cfg, docs=docs, harness_dir=harness_dir, client=client, t0=t0,
                            observer=TrackingObserver(obs, tracker, total=len(docs), done=done, accepted=accepted),
                            executor=ex,
                        )  # fmt: skip
                    finally:
                        ticker.cancel()
            tracker.summary(stats)
        finally:
            tracker.finish()
            await client.aclose()
    return stats


class TrackingObserver(LoopObserver):
    """Forwards loop events to ``inner`` (the progress bar) and logs documents done, accepted
    and pass rate to the experiment tracker after each document."""

    def __init__(self, inner: LoopObserver, tracker: Tracker, *, total: int, done: int, accepted: int) -> None:
        self.inner, self.tracker = inner, tracker
        self.total, self.done, self.accepted = total, done, accepted

    def round_started(self, doc_id: str, round_no: int) -> None:
        self.inner.round_started(doc_id, round_no)

    def document_finished(self, traj: Trajectory) -> None:
        self.inner.document_finished(traj)
        self.done += 1
        self.accepted += traj.status == "accepted"
        self.tracker.log(
            {"documents_done": self.done, "accepted": self.accepted, "pass_rate": self.accepted / self.done,
             "rounds": len(traj.rounds)},
            step=self.done,
        )  # fmt: skip


async def evaluate_harness(
    run_dir: Path,
    *,
    cfg: GenerateConfig,
    docs: list[Document],
    harness_dir: Path,
    client: LLMClient,
    observer: LoopObserver | None = None,
    t0: float | None = None,
    return_trajectories: bool = False,
    replicate: int = 0,
    executor: Executor = LOCAL,
) -> tuple[list[Trajectory] | None, dict[str, Any]]:
    """Run ``harness`` on ``docs`` into ``run_dir`` with an existing client; write stats.json.

    The building block of both ``autodata-generate`` and the meta loop's evaluations (which
    share one client, so endpoints' in-flight limits hold across concurrent evaluations).
    Resumable like :func:`run_generate`: finished documents in ``run_dir`` are not redone.

    Args:
        harness_dir: the harness directory; its code runs only in the sealed sandbox, one
            process per document (:mod:`inner.sandbox.process`).

        return_trajectories: also return every document's trajectory (held in memory: for
            small evaluations such as the meta loop's; a generation run keeps none, and its
            stats are accumulated as documents end).
        replicate: the replicate index of this evaluation (0: the default samples). Every
            sample index of the harness and the evaluator derives from it
            (:func:`inner.llm.cache.sample_index`): replicate ``r`` is reproducible from the
            cache and replicates are independent draws. Use one ``run_dir`` per replicate.
        executor: where the documents run (:mod:`inner.engine.executor`; this process by
            default). With ``executor=ray`` the calls are made by the Ray workers and merged
            into ``client``'s meters as each document returns.

    Returns:
        ``(trajectories of docs or None, stats)``; ``stats["this_invocation"]`` counts only
        the calls made by this evaluation.
    """
    t0 = time.perf_counter() if t0 is None else t0
    writer = RunWriter(run_dir)
    hid = make_harness_id(harness_dir)
    eng = Engine(cfg, client, harness_dir, hid, writer, observer or LoopObserver(), replicate=replicate)
    acc = StatsAccumulator()
    kept: dict[str, Trajectory] | None = {} if return_trajectories else None

    def finished(doc: Document, traj: Trajectory) -> None:
        acc.add(traj)  # stats built as documents end: nothing re-read, nothing held
        if kept is not None:
            kept[doc.doc_id] = traj

    with track_usage(UsageMeter()) as meter:
        await executor.run_documents(eng, docs, on_finished=finished)
    stats = acc.result(
        method=cfg.method,
        harness_id=hid,
        task=cfg.task.name,
        this_invocation=meter.as_dict(),
        wall_s=time.perf_counter() - t0,
        replicas=merge_replica_counts(client.replica_counts(), executor.replica_counts()),
    )
    writer.write_json("stats.json", stats)
    return ([kept[d.doc_id] for d in docs] if kept is not None else None), stats


@contextlib.contextmanager
def throughput_gc() -> Iterator[None]:
    """Fewer garbage-collector passes over long-lived objects while a run is in flight.

    ``gc.freeze`` moves everything loaded so far (configs, modules, the document list) out of
    the collector's way, so each collection only walks what the run allocated since. The
    gen-0 threshold is left at its default: a higher one (20,000, tried for throughput) let
    cyclic garbage pile up between collections and made peak RSS grow by ~2 KiB per finished
    document (``experiments/bench/README.md``, memory benchmark). Unfrozen on exit.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: bounds of the one import check's wall-clock limit, seconds: ``inner.harness_wall_s`` (what a
#: document allows its import) kept within them (the lower bound leaves room for a slow sandbox
#: start on a loaded machine)
IMPORT_CHECK_TIMEOUT_S = (10.0, 120.0)


async def check_harness_loads(harness_dir: Path, cfg: GenerateConfig, *, name: str) -> None:
    """Import the harness once in the sandbox (the child's ``--check``) before any document:
    a harness that does not import (a syntax error, a missing module) or defines no
    ``async def run(agent)`` would crash every document alike, so it stops the run up front,
    as a config error does.

    Raises:
        HarnessError: the import error, or the missing ``run``.
        SandboxError: bubblewrap is missing or unusable.
    """
    lo, hi = IMPORT_CHECK_TIMEOUT_S
    problem = await validate_harness(
        harness_dir, timeout_s=min(max(cfg.inner.harness_wall_s, lo), hi), memory_mb=cfg.inner.harness_memory_mb
    )
    if problem is not None:
        raise HarnessError(f"harness {name} cannot run, so no document was started: {problem}")


def harness_dir_for(cfg: GenerateConfig) -> Path:
    """The harness directory of a run: ``cfg.harness``, or ``harnesses/cot_self_instruct`` for
    ``method=cot_self_instruct`` (the one-shot baseline through the same contract).

    Raises:
        HarnessError: no such harness directory.
    """
    return resolve_harness_dir("cot_self_instruct" if cfg.method == "cot_self_instruct" else cfg.harness)


def _unused_urls(cfg: GenerateConfig) -> dict[str, str]:
    """Placeholder URLs when every document is already finished: no request will be made."""
    return {name: "http://127.0.0.1:9/v1" for name in cfg.llm.endpoints}


async def _tick(obs: Any, period_s: float = 1.0) -> None:
    refresh = getattr(obs, "refresh", None)
    while refresh is not None:
        refresh()
        await asyncio.sleep(period_s)
