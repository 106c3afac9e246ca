"""The judge LLM for rewards: the project's backend and client, as ``autodata-generate`` uses them.

:func:`judge_endpoints` starts the configured backend (``llm=local``: the embedded llama.cpp
server; ``llm=vllm``: ``vllm serve``; ``llm=openai`` or endpoints with a ``base_url``: nothing)
exactly like :func:`inner.engine.run.run_generate`, and yields the base URLs. :func:`build_judge_client`
makes an :class:`~inner.llm.client.LLMClient` on them with the response cache and the call log
of the run directory, so judge calls are cached, retried, bounded per endpoint and counted per
role (``judge``) like every other LLM call of the project.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from inner.config import LLMConfig
from inner.llm.backends import start_backend
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient


@contextlib.contextmanager
def judge_endpoints(
    llm: LLMConfig, *, run_dir: Path, base_urls: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Start the backend of ``llm`` (unless ``base_urls`` is given) and yield endpoint URLs.

    Args:
        llm: the ``llm`` config (its ``judge`` role names the endpoint used).
        run_dir: where ``llm_server.log`` goes.
        base_urls: endpoint name -> URL, bypassing the backend (tests, an already running server).

    Raises:
        BackendError / ModelWeightsError: the server could not be started.
    """
    if base_urls is not None:
        yield base_urls
        return
    with start_backend(llm, log_dir=run_dir) as urls:
        yield urls


def build_judge_client(llm: LLMConfig, *, run_dir: Path, base_urls: dict[str, str]) -> LLMClient:
    """An LLM client with the run directory's response cache (``llm.cache_dir`` or
    ``<run_dir>/llm_cache``) and call log (``<run_dir>/calls.jsonl``).

    Raises:
        ConfigError: an endpoint has no URL or its API-key variable is empty.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = ResponseCache(Path(llm.cache_dir) if llm.cache_dir else run_dir / "llm_cache")
    return LLMClient(llm, base_urls=base_urls, cache=cache, call_log=run_dir / "calls.jsonl")
