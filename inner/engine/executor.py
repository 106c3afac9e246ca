"""The executor seam: where the documents of an evaluation run (``executor=local|ray``).

Both ``autodata-generate`` (:func:`inner.engine.run.run_generate`) and the meta loop's
evaluations (:meth:`meta.loop.MetaRun.evaluate`) run their documents through
:func:`inner.engine.run.evaluate_harness`, which hands them to an :class:`Executor`:

- :class:`LocalExecutor` (``executor=local``, the default): this process, asyncio,
  ``inner.max_concurrent_documents`` documents at once (:func:`inner.engine.loop.run_documents`).
  Ray is never imported.
- :class:`inner.engine.ray_executor.RayExecutor` (``executor=ray``): Ray Core actors, each
  running the same per-document loop with its own LLM client and sandboxes; this process stays
  the one writer of ``dataset.jsonl`` and ``stats.json`` (README, "Running on Ray").

The inner loop, the evaluator and the records do not depend on the executor: the same documents,
seeds and cache give the same dataset (up to line order) either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from inner.config import ExecutorConfig, LLMConfig
from inner.engine.documents import Document
from inner.engine.loop import Engine, run_documents
from inner.engine.records import Trajectory
from inner.sdk.errors import AutodataError


class ExecutorError(AutodataError):
    """The executor could not run the documents: Ray is not installed or its cluster cannot be
    reached, or a document's worker died more often than ``executor.max_retries``. Finished
    documents are on disk; a rerun into the same run directory redoes the rest."""


class Executor(Protocol):
    """Runs the documents of one evaluation."""

    async def run_documents(
        self,
        eng: Engine,
        docs: Iterable[Document],
        on_finished: Callable[[Document, Trajectory], None] | None = None,
    ) -> None:
        """Run every document of ``docs`` not already finished in ``eng.writer.run_dir``; as
        :func:`inner.engine.loop.run_documents` (``on_finished`` once per document, in
        completion order; records on disk before it is called)."""
        ...

    def replica_counts(self) -> dict[str, list[dict[str, Any]]]:
        """Per-replica counts of the requests made outside the driver's client (by Ray actors),
        in :meth:`inner.llm.client.LLMClient.replica_counts`' shape; ``{}`` when the driver's
        client made every request."""
        ...


def merge_replica_counts(*counts: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Several clients' :meth:`inner.llm.client.LLMClient.replica_counts` as one: per endpoint
    and replica (``base_urls`` order, the same in every client), ``requests``, ``failures`` and
    ``taken_out`` summed, ``in_flight_peak`` the largest (each client's own peak)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for c in counts:
        for endpoint, replicas in c.items():
            mine = out.get(endpoint)
            if mine is None:
                out[endpoint] = [dict(r) for r in replicas]
                continue
            for m, r in zip(mine, replicas, strict=True):
                for key in ("requests", "failures", "taken_out"):
                    m[key] += r[key]
                m["in_flight_peak"] = max(m["in_flight_peak"], r["in_flight_peak"])
    return dict(sorted(out.items()))


class LocalExecutor:
    """``executor=local``: the documents run in this process (:func:`inner.engine.loop.run_documents`)."""

    async def run_documents(
        self,
        eng: Engine,
        docs: Iterable[Document],
        on_finished: Callable[[Document, Trajectory], None] | None = None,
    ) -> None:
        await run_documents(eng, docs, on_finished=on_finished)

    def replica_counts(self) -> dict[str, list[dict[str, Any]]]:
        """``{}``: the driver's client made every request."""
        return {}


#: the executor of code that names none (tests, ``autodata-confirm``): this process
LOCAL = LocalExecutor()


@contextlib.asynccontextmanager
async def open_executor(
    cfg: ExecutorConfig,
    *,
    llm: LLMConfig,
    base_urls: Mapping[str, str | list[str]],
    cache_root: Path,
    log_dir: Path,
    max_concurrent_documents: int,
) -> AsyncIterator[Executor]:
    """The executor of ``cfg``, closed on exit (Ray's actors killed; a Ray instance this process
    started is stopped).

    Args:
        cfg: ``executor``.
        llm: the LLM config the workers' clients are built from.
        base_urls: endpoint name -> base URL (what the backend started, or the configured ones);
            a Ray worker on another node must be able to reach them.
        cache_root: the response cache's directory (shared by the driver and every worker: each
            process appends its own segment).
        log_dir: where each worker writes its ``calls-worker<i>.jsonl``.
        max_concurrent_documents: ``inner.max_concurrent_documents`` (split over the workers
            unless ``executor.documents_per_worker`` is set).

    Raises:
        ExecutorError: ``executor=ray`` without the ``ray`` package.
    """
    if cfg.kind == "local":
        yield LOCAL
        return
    try:
        from inner.engine.ray_executor import RayExecutor
    except ImportError as exc:
        raise ExecutorError(
            f"executor=ray needs the ray package ({exc}): pip install -e '.[ray]' (make install installs it)"
        ) from exc
    ex = RayExecutor(
        cfg,
        llm=llm,
        base_urls=base_urls,
        cache_root=cache_root,
        log_dir=log_dir,
        max_concurrent_documents=max_concurrent_documents,
    )
    try:
        yield ex
    finally:
        ex.close()
