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
from typing import Protocol

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


class LocalExecutor:
    """``executor=local``: the documents run in this process (:func:`inner.engine.loop.run_documents`)."""

    async def run_documents(
        self,
        eng: Engine,
        docs: Iterable[Document],
        on_finished: Callable[[Document, Trajectory], None] | None = None,
    ) -> None:
        await run_documents(eng, docs, on_finished=on_finished)


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
