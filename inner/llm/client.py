"""The one LLM client: async ``openai`` against OpenAI-compatible endpoints.

Every role (challenger, quality verifier, main agent, weak/strong solver, judge) names an
endpoint in :class:`~inner.config.LLMConfig`. An endpoint has one replica (``base_url``) or
several (``base_urls``), each with its own ``openai`` client (on openai's aiohttp transport,
``openai.DefaultAioHttpClient``: a third less CPU per call than its httpx2 pool at 64 in
flight, ``experiments/bench/README.md``) and a ceiling of ``max_in_flight`` requests; :class:`~inner.llm.replicas.ReplicaPool` sends each request to the least busy replica
and re-sends it to another when a replica fails (:mod:`inner.llm.replicas`). Retries with
exponential backoff on 408, 409, 429, 5xx, timeouts and dropped connections are done by the
``openai`` client (``max_retries``, ``Retry-After`` honoured); a 200 that is not a usable completion (a body that is not JSON, no choices, empty
content: a gateway's transient error that ``openai`` does not retry) is retried here with the
same budget and backoff. Every call is looked up in the content-addressed
:class:`~inner.llm.cache.ResponseCache` first, counted per role, and logged as one line of
``calls.jsonl``.

Every way a call can fail ends as one typed :class:`~inner.sdk.errors.LLMCallError` subtype
(``status``, ``timeout``, ``connection``, ``bad_response``, ``empty``; ``schema`` for
structured output still invalid after its repair, returned rather than raised): it is counted
in the role's ``failures`` and ``failure_kinds``, logged as one ``calls.jsonl`` line whose
``error`` is the kind, and never cached, so a rerun asks again.

Each request carries the header ``X-Autodata-Role: <role>`` so that proxies, server logs and
the scripted test server can tell the roles apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import aiohttp
import httpx2
import openai
from pydantic import BaseModel

from inner.config import LLMConfig
from inner.llm.cache import ResponseCache, cache_key
from inner.llm.replicas import Replica, ReplicaPool, display_url, server_at_fault
from inner.sdk.contract import (  # noqa: F401  (re-exported: the parent and the sandbox share them)
    CompleteFn,
    Completion,
    JSONResult,
    Message,
    inline_schema,
    json_with_repair,
    model_schema,
    parse_json_output,
)
from inner.sdk.errors import (
    ConfigError,
    LLMBadResponseError,
    LLMCallError,
    LLMConnectionError,
    LLMEmptyError,
    LLMSchemaError,
    LLMStatusError,
    LLMTimeoutError,
)
from inner.sdk.protocol import sanitize

T = TypeVar("T", bound=BaseModel)

ROLE_HEADER = "X-Autodata-Role"


@dataclass
class RoleUsage:
    """Counters of one role. ``calls`` are requests actually sent; ``cached_calls`` were
    served from the cache; tokens count both (what the records cost, cached or not).
    ``failures`` are calls that ended in an :class:`~inner.sdk.errors.LLMCallError` (after all
    retries, or a structured output still invalid after its repair), and ``failure_kinds``
    counts them by kind (``status``, ``timeout``, ``connection``, ``bad_response``,
    ``empty``, ``schema``)."""

    calls: int = 0
    cached_calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def add(self, c: Completion) -> None:
        if c.cached:
            self.cached_calls += 1
        else:
            self.calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    def add_failure(self, kind: str) -> None:
        self.failures += 1
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        """The counters; ``failure_kinds`` only when there was a failure (so a usage without
        failures has the same keys as :class:`~inner.sdk.contract.RoleUsageRecord`)."""
        d = asdict(self)
        if not self.failure_kinds:
            del d["failure_kinds"]
        return d


@dataclass
class UsageMeter:
    """Per-role :class:`RoleUsage` counters."""

    roles: dict[str, RoleUsage] = field(default_factory=lambda: defaultdict(RoleUsage))
    #: completion tokens of requests actually sent (not cache hits), for tokens/s
    live_completion_tokens: int = 0

    def record(self, role: str, c: Completion) -> None:
        self.roles[role].add(c)
        if not c.cached:
            self.live_completion_tokens += c.completion_tokens

    def record_failure(self, role: str, kind: str) -> None:
        self.roles[role].add_failure(kind)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{role: counters}`` sorted by role (see :meth:`RoleUsage.as_dict`)."""
        return {r: u.as_dict() for r, u in sorted(self.roles.items())}

    def merge(self, roles: dict[str, dict[str, Any]], live_completion_tokens: int = 0) -> None:
        """Add counters made elsewhere (another process's :meth:`as_dict`, e.g. a Ray worker's
        usage of one document) to these."""
        for role, u in roles.items():
            mine = self.roles[role]
            for key in ("calls", "cached_calls", "failures", "prompt_tokens", "completion_tokens"):
                setattr(mine, key, getattr(mine, key) + int(u.get(key, 0)))
            for kind, n in (u.get("failure_kinds") or {}).items():
                mine.failure_kinds[kind] = mine.failure_kinds.get(kind, 0) + int(n)
        self.live_completion_tokens += live_completion_tokens

    @property
    def total_failures(self) -> int:
        return sum(u.failures for u in self.roles.values())

    @property
    def total_calls(self) -> int:
        return sum(u.calls for u in self.roles.values())


#: Extra meters (e.g. the usage of one round) that every completion in this context also
#: updates; set with :meth:`LLMClient.track`. Child asyncio tasks inherit the value.
_TRACKERS: contextvars.ContextVar[tuple[UsageMeter, ...]] = contextvars.ContextVar("trackers", default=())


@contextlib.contextmanager
def track_usage(meter: UsageMeter) -> Iterator[UsageMeter]:
    """Within this block, every completion of the current context (and of asyncio tasks
    started from it) is also counted in ``meter``; used for per-round usage."""
    token = _TRACKERS.set(_TRACKERS.get() + (meter,))
    try:
        yield meter
    finally:
        _TRACKERS.reset(token)


def response_format(json_mode: str, schema: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The ``response_format`` request field for an endpoint's ``json_mode``."""
    if schema is None or json_mode == "none":
        return None
    if json_mode == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


def _tool_calls(message: Any) -> list[dict[str, Any]] | None:
    """The tool calls of a reply message as plain dicts ``{"id", "type": "function",
    "function": {"name", "arguments"}}`` (``arguments`` a JSON string, as sent), or ``None``."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        args = fn.get("arguments")
        if not isinstance(args, str):
            args = json.dumps(args if args is not None else {})
        out.append({"id": str(c.get("id") or f"call_{i}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})  # fmt: skip
    return out or None


def endpoint_urls(cfg: LLMConfig, name: str, base_urls: Mapping[str, str | list[str]] | None = None) -> list[str]:
    """The replica URLs of endpoint ``name``: its ``base_urls`` or ``base_url``, else what the
    backend started (``base_urls[name]``, one URL or a list).

    Raises:
        ConfigError: the endpoint has no URL from either.
    """
    urls = cfg.endpoints[name].urls
    if not urls:
        given = (base_urls or {}).get(name)
        urls = [given] if isinstance(given, str) else list(given or [])
    if not urls:
        raise ConfigError(
            f"llm.endpoints.{name}.base_url is not set and no backend started a server for it: "
            "set base_url (or base_urls for replicas), or use llm=local / llm=vllm"
        )
    return urls


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``openai.APITimeoutError``) is really a connection failure: the
    aiohttp transport that openai vendors (``openai._vendor.httpx_aiohttp``, from httpx-aiohttp
    0.2.0) maps every ``aiohttp.ClientConnectionError`` (a refused connection, a server that hung
    up) to ``httpx2.ConnectTimeout``, so the cause chain is checked for an aiohttp connection
    error that is not a timeout."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, aiohttp.ClientConnectionError) and not isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


class LLMClient:
    """Async client for all roles.

    Args:
        cfg: endpoints, roles and seed.
        base_urls: endpoint name -> base URL, or a list of replica URLs, for endpoints with
            neither ``base_url`` nor ``base_urls`` (filled in by the backend that started the
            server(s)).
        cache: response cache, or ``None`` to disable caching.
        call_log: path of ``calls.jsonl`` (one line per call), or ``None``.

    Raises:
        ConfigError: an endpoint has no base URL, or its API-key variable is unset.
    """

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        base_urls: Mapping[str, str | list[str]] | None = None,
        cache: ResponseCache | None = None,
        call_log: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.usage = UsageMeter()
        self._pools: dict[str, ReplicaPool] = {}
        for name, ep in cfg.endpoints.items():
            urls = endpoint_urls(cfg, name, base_urls)
            key = "sk-local"
            if ep.api_key_env:
                key = os.environ.get(ep.api_key_env, "")
                if not key:
                    raise ConfigError(
                        f"llm.endpoints.{name}.api_key_env={ep.api_key_env!r}: that environment variable is empty; "
                        f"export {ep.api_key_env}=..."
                    )
            replicas = []
            for i, url in enumerate(urls):
                # openai's aiohttp transport (the openai[aiohttp] extra): httpx2's own pool checks
                # every pooled connection on every request (readability, expiry), about 1.3 ms of
                # CPU per call at 64 in flight, 5.4 -> 3.5 ms per call in all
                # (experiments/bench/README.md). The pool caps a replica's requests at
                # max_in_flight, so its connection pool needs no more connections than that.
                http = openai.DefaultAioHttpClient(
                    limits=httpx2.Limits(max_connections=ep.max_in_flight, max_keepalive_connections=ep.max_in_flight),
                    timeout=ep.timeout_s,
                )
                client = openai.AsyncOpenAI(
                    base_url=url, api_key=key, max_retries=ep.max_retries, timeout=ep.timeout_s, http_client=http
                )
                replicas.append(Replica(index=i, url=url, client=client, max_in_flight=ep.max_in_flight))
            self._pools[name] = ReplicaPool(
                name, replicas, cooldown_s=ep.replica_cooldown_s, cooldown_max_s=ep.replica_cooldown_max_s
            )
        self._log = call_log.open("a", encoding="utf-8", buffering=1) if call_log else None

    async def complete(
        self,
        role: str,
        messages: list[Message],
        *,
        sample_index: int = 0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
        tools: list[dict[str, Any]] | None = None,
        pending: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> Completion:
        """One chat completion for ``role``, from the cache when possible.

        Args:
            role: one of :data:`inner.config.ROLES` (or a meta role configured the same way).
            messages: OpenAI chat messages.
            sample_index: distinguishes repeated samples of the same prompt (cache key and
                seed ``llm.seed + sample_index``).
            json_schema: constrain the output to this JSON schema where the endpoint supports it.
            tools: OpenAI-style function tools (``[{"type": "function", "function": {"name",
                "description", "parameters"}}]``), sent with ``tool_choice="auto"``; the reply's
                calls come back in ``Completion.tool_calls`` as plain dicts (a reply with tool
                calls may have empty text). Part of the cache key.
            pending: a list to append this reply's cache entry to instead of writing it; the
                caller writes it with :meth:`commit` once the reply proves usable, or drops it
                (structured output still unusable after its repair is never cached).

        Raises:
            LLMCallError: the call failed after the endpoint's retries; the subtype says how
                (:class:`~inner.sdk.errors.LLMStatusError`, ``LLMTimeoutError``,
                ``LLMConnectionError``, ``LLMBadResponseError``, ``LLMEmptyError``).
        """
        return await self._complete(role, messages, sample_index, json_schema, schema_name, pending, tools)

    def commit(self, pending: list[tuple[str, dict[str, Any]]]) -> None:
        """Write the cache entries held back in ``pending`` (see :meth:`complete`)."""
        if self.cache is not None:
            for key, entry in pending:
                self.cache.put(key, entry)

    async def _complete(
        self,
        role: str,
        messages: list[Message],
        sample_index: int,
        json_schema: dict[str, Any] | None,
        schema_name: str,
        pending: list[tuple[str, dict[str, Any]]] | None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """:meth:`complete`; with ``pending``, the cache write is appended there instead of
        done (the caller writes it once the reply proves usable)."""
        rc = self.cfg.role(role)
        ep = self.cfg.endpoints[rc.endpoint]
        params: dict[str, Any] = {
            "model": ep.model,
            "temperature": rc.temperature,
            "top_p": rc.top_p,
            "max_tokens": rc.max_tokens,
            "seed": self.cfg.seed + sample_index,
        }
        rf = response_format(ep.json_mode, json_schema, schema_name)
        if tools:
            params["tools"] = tools
            params["tool_choice"] = "auto"
        key = cache_key(
            {
                # the role is part of the key: a harness role can never fill (or read) the
                # cache entry of a frozen role, even when both are sampled alike
                "role": role,
                "messages": messages,
                "params": params,
                "response_format": rf,
                "sample_index": sample_index,
            }
        )
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            comp = Completion(
                text=hit["text"],
                prompt_tokens=hit.get("prompt_tokens", 0),
                completion_tokens=hit.get("completion_tokens", 0),
                cached=True,
                finish_reason=hit.get("finish_reason"),
                tool_calls=hit.get("tool_calls"),
            )
        else:
            # raises a typed LLMCallError (counted, logged) before anything is cached
            comp = await self._request(role, rc.endpoint, key, messages, params, rf)
            if self.cache is not None:
                entry = {
                    "role": role,
                    "model": ep.model,
                    "text": comp.text,
                    "prompt_tokens": comp.prompt_tokens,
                    "completion_tokens": comp.completion_tokens,
                    "finish_reason": comp.finish_reason,
                }
                if comp.tool_calls:
                    entry["tool_calls"] = comp.tool_calls
                if pending is None:
                    self.cache.put(key, entry)
                else:
                    pending.append((key, entry))
        self.usage.record(role, comp)
        for meter in _TRACKERS.get():
            meter.record(role, comp)
        self._write_log(role, rc.endpoint, key, comp, None)
        return comp

    async def _request(
        self,
        role: str,
        endpoint: str,
        key: str,
        messages: list[Message],
        params: dict[str, Any],
        rf: dict[str, Any] | None,
    ) -> Completion:
        """Send one completion request; a 200 that is not a usable completion is retried up to
        the endpoint's ``max_retries`` times (``openai`` retries the rest itself).

        Raises:
            LLMCallError: a typed subtype, after counting and logging it (:meth:`_fail`).
        """
        body: dict[str, Any] = {"messages": messages, **params}
        if rf is not None:
            body["response_format"] = rf
        ep = self.cfg.endpoints[endpoint]
        for attempt in range(ep.max_retries + 1):
            try:
                return await self._send(role, endpoint, body)
            except (LLMBadResponseError, LLMEmptyError) as exc:
                if attempt == ep.max_retries:
                    self._fail(exc, key)
                # the same schedule as openai's: 0.5 s doubling up to 8 s, minus up to 25 % jitter
                await asyncio.sleep(min(0.5 * 2.0**attempt, 8.0) * (1 - 0.25 * random.random()))
            except LLMCallError as exc:
                self._fail(exc, key)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, role: str, endpoint: str, body: dict[str, Any]) -> Completion:
        """One request (with ``openai``'s own retries) on the least busy replica, re-sent to
        another replica after a failure the server is at fault for
        (:func:`~inner.llm.replicas.server_at_fault`) while one is left untried; raises an
        uncounted typed error."""
        ep = self.cfg.endpoints[endpoint]
        pool = self._pools[endpoint]
        several = len(pool.replicas) > 1

        def err(
            cls: type[LLMCallError], what: str, cause: BaseException | str, status: int | None = None
        ) -> LLMCallError:
            detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
            where = f"endpoint {endpoint!r} ({ep.model})"
            if several:
                where += f" on replica {replica.index} ({display_url(replica.url)}), the last of {len(tried)} tried,"
            return cls(
                f"{role} call to {where} failed after {ep.max_retries} retries: {what}: {detail}",
                role=role,
                endpoint=endpoint,
                status=status,
                cause=detail,
            )

        tried: set[int] = set()
        while True:
            replica = await pool.acquire(frozenset(tried))
            generation = replica.generation
            t0 = time.perf_counter()
            try:
                # client.post with cast_to=dict (openai's documented way to call any route) keeps
                # openai's retries, backoff and timeouts but skips building a pydantic
                # ChatCompletion and re-walking the messages: a third of the per-call CPU.
                resp = await replica.client.post(
                    "/chat/completions", body=body, cast_to=dict, options={"headers": {ROLE_HEADER: role}}
                )
            except BaseException as exc:
                tried.add(replica.index)
                failure = self._typed(exc, err, ep.timeout_s)
                if failure is None:  # cancelled, or a bug: not the replica's failure
                    pool.release(replica)
                    raise
                at_fault = server_at_fault(failure.kind, failure.status)
                pool.release(replica, failed=True, generation=generation if at_fault else -1, error=str(failure))
                if at_fault and len(tried) < len(pool.replicas):
                    continue  # re-sent to a replica it has not tried
                raise failure from exc
            pool.release(replica, ok=True)
            latency = time.perf_counter() - t0
            break
        if not isinstance(resp, dict):  # openai returns the text of a non-JSON content type
            raise err(LLMBadResponseError, "the reply body is not JSON", repr(str(resp)[:200]))
        choices = resp.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            raise err(LLMBadResponseError, "the reply has no choices", repr(json.dumps(resp)[:200]))
        # valid UTF-8 from here on (JSON allows lone surrogates): the reply reaches the cache and records
        message = sanitize(choice.get("message"), max_depth=1 << 30)
        text = message.get("content") if isinstance(message, dict) else None
        if text is not None and not isinstance(text, str):
            raise err(LLMBadResponseError, "the message content is not text", repr(text)[:200])
        tool_calls = _tool_calls(message) if "tools" in body else None
        if tool_calls:  # a reply that calls tools may have no text
            text = text or ""
        elif not text or not text.strip():
            reason = choice.get("finish_reason")
            raise err(LLMEmptyError, "empty message content", f"finish_reason={reason!r}")
        usage = resp.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            latency_s=latency,
            finish_reason=choice.get("finish_reason"),
            tool_calls=tool_calls,
        )

    @staticmethod
    def _typed(exc: BaseException, err: Any, timeout_s: float) -> LLMCallError | None:
        """The typed error for an exception of ``openai``'s ``post`` (``None`` for any other:
        cancellation, a bug), built with ``err(cls, what, cause, status)``."""
        if isinstance(exc, openai.APIStatusError):
            return err(LLMStatusError, f"HTTP {exc.status_code}", exc, exc.status_code)
        if isinstance(exc, openai.APITimeoutError) and not _refused(exc):  # a subclass of APIConnectionError: first
            return err(LLMTimeoutError, f"no reply within {timeout_s:g} s", exc)
        if isinstance(exc, openai.APIConnectionError):
            return err(LLMConnectionError, "connection failed", exc)
        if isinstance(exc, openai.APIResponseValidationError):
            return err(LLMBadResponseError, "the reply is not a chat completion", exc)
        if isinstance(exc, ValueError):  # a JSON content type whose body does not decode
            return err(LLMBadResponseError, "the reply body is not JSON", exc)
        return None

    def replica_urls(self) -> dict[str, list[str]]:
        """``{endpoint: [base URL of each replica]}``, replicas in ``base_urls`` order (for a
        process that needs its own client of the same endpoints, e.g. GRPO's judge reward)."""
        return {name: [r.url for r in pool.replicas] for name, pool in self._pools.items()}

    def replica_counts(self) -> dict[str, list[dict[str, Any]]]:
        """``{endpoint: [per replica {"url", "requests", "failures", "in_flight_peak",
        "taken_out"}]}`` since this client was made, replicas in ``base_urls`` order (see
        :class:`~inner.llm.replicas.Replica`); URLs without user info."""
        return {name: pool.counts() for name, pool in sorted(self._pools.items())}

    def _fail(self, exc: LLMCallError, key: str | None) -> NoReturn:
        """Count ``exc`` in the usage (and every tracked meter), log it, raise it."""
        self.record_failure(exc, key)
        raise exc

    def record_failure(self, exc: LLMCallError, key: str | None = None) -> None:
        """Count ``exc`` in the role's usage (and every tracked meter) and log it as one
        ``calls.jsonl`` line, without raising. For failures found outside this client, e.g. a
        harness's structured output still invalid after its repair (an ``LLMSchemaError``)."""
        self.usage.record_failure(exc.role, exc.kind)
        for meter in _TRACKERS.get():
            meter.record_failure(exc.role, exc.kind)
        self._write_log(exc.role, exc.endpoint or "", key, None, exc)

    async def complete_json(
        self, role: str, messages: list[Message], model: type[T], *, sample_index: int = 0
    ) -> JSONResult[T]:
        """A completion parsed into the pydantic ``model``.

        Sends the model's JSON schema as ``response_format`` where the endpoint supports it.
        If the reply does not parse or validate, asks once more with the validation error
        appended; if that fails too, returns a :class:`JSONResult` with ``value=None``, the
        raw texts and the error (never raises for bad output). That outcome is an
        :class:`~inner.sdk.errors.LLMSchemaError` in the accounting: counted in the role's
        ``failures`` (kind ``schema``), logged, and its replies are not cached, so a rerun
        asks again; the replies of a usable result are cached.

        Raises:
            LLMCallError: a request failed after retries (a transport problem, not bad output).
        """
        pending: list[tuple[str, dict[str, Any]]] = []

        async def send(convo: list[Message], schema: dict[str, Any]) -> Completion:
            return await self._complete(role, convo, sample_index, schema, model.__name__, pending)

        res = await json_with_repair(send, messages, model)
        if res.ok:
            self.commit(pending)
        else:
            endpoint = self.cfg.role(role).endpoint
            detail = res.error or "unusable output"
            self.record_failure(
                LLMSchemaError(
                    f"{role} reply does not match {model.__name__} after one repair: {detail}",
                    role=role,
                    endpoint=endpoint,
                    cause=detail,
                ),
                pending[-1][0] if pending else None,
            )
        return res

    def _write_log(
        self,
        role: str,
        endpoint: str,
        key: str | None,
        comp: Completion | None,
        error: LLMCallError | None,
    ) -> None:
        if self._log is None:
            return
        line: dict[str, Any] = {
            "t": round(time.time(), 3),
            "role": role,
            "endpoint": endpoint,
            "key": key,
            "error": error.kind if error is not None else None,
        }
        if error is not None:
            line |= {"status": error.status, "detail": (error.cause or "")[:300]}
        if comp is not None:
            line |= {
                "cached": comp.cached,
                "prompt_tokens": comp.prompt_tokens,
                "completion_tokens": comp.completion_tokens,
                "latency_s": round(comp.latency_s, 4),
                "finish_reason": comp.finish_reason,
            }
        self._log.write(json.dumps(line) + "\n")

    def record_usage(self, roles: dict[str, dict[str, Any]], live_completion_tokens: int = 0) -> None:
        """Count calls made by another process for this client's run (a Ray worker's, returned
        with its document: :mod:`inner.engine.ray_executor`) in :attr:`usage` and every meter
        tracked in this context (:func:`track_usage`), as if this client had made them.

        Args:
            roles: ``{role: counters}`` as :meth:`UsageMeter.as_dict` returns them.
            live_completion_tokens: completion tokens of requests actually sent (tokens/s).
        """
        for meter in (self.usage, *_TRACKERS.get()):
            meter.merge(roles, live_completion_tokens)

    async def aclose(self) -> None:
        """Close the HTTP connections and the call log."""
        for pool in self._pools.values():
            pool.close()
            for r in pool.replicas:
                await r.client.close()
        if self._log:
            self._log.close()
            self._log = None
