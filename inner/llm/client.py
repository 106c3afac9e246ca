"""The one LLM client: async ``openai`` against OpenAI-compatible endpoints.

Every role (challenger, quality verifier, main agent, weak/strong solver, judge) names an
endpoint in :class:`~inner.config.LLMConfig`. Requests to one endpoint are bounded by its
``max_in_flight`` semaphore; retries with exponential backoff on 429, 5xx, timeouts and
dropped connections are done by the ``openai`` client (``max_retries``). Every call is looked
up in the content-addressed :class:`~inner.llm.cache.ResponseCache` first, counted per role,
and logged as one line of ``calls.jsonl``.

Each request carries the header ``X-Autodata-Role: <role>`` so that proxies, server logs and
the scripted test server can tell the roles apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx2
import openai
from pydantic import BaseModel, ValidationError

from inner.config import LLMConfig
from inner.errors import ConfigError, LLMCallError
from inner.llm.cache import ResponseCache, cache_key

T = TypeVar("T", bound=BaseModel)
Message = dict[str, str]

ROLE_HEADER = "X-Autodata-Role"


@dataclass
class Completion:
    """One chat completion.

    Attributes:
        text: the assistant message content.
        prompt_tokens / completion_tokens: usage reported by the server (0 if it reports none).
        cached: served from the response cache (no request was made).
        latency_s: wall time of the request in seconds (0 for cache hits).
        finish_reason: ``stop``, ``length``, ... as reported by the server.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    latency_s: float = 0.0
    finish_reason: str | None = None


@dataclass
class JSONResult(Generic[T]):
    """A structured output: the validated ``value``, or a typed failure with the raw text.

    Attributes:
        value: the parsed pydantic model, or ``None`` when both attempts failed.
        raw: raw text of every attempt (one, or two when a repair was asked for).
        error: the last validation error, ``None`` on success.
    """

    value: T | None
    raw: list[str]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass
class RoleUsage:
    """Counters of one role. ``calls`` are requests actually sent; ``cached_calls`` were
    served from the cache; tokens count both (what the records cost, cached or not)."""

    calls: int = 0
    cached_calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, c: Completion) -> None:
        if c.cached:
            self.cached_calls += 1
        else:
            self.calls += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    def merge(self, other: RoleUsage) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


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

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {r: asdict(u) for r, u in sorted(self.roles.items())}

    @property
    def total_calls(self) -> int:
        return sum(u.calls for u in self.roles.values())

    @property
    def total_tokens(self) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in self.roles.values())


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


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json_output(text: str, model: type[T]) -> T:
    """Parse an LLM reply into ``model``.

    Tolerates code fences and prose around the JSON object (the outermost ``{...}`` is used).

    Raises:
        ValueError: no JSON object, invalid JSON, or a schema violation (message says which).
    """
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    start, end = candidate.find("{"), candidate.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object found in the reply")
    try:
        data = json.loads(candidate[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"JSON does not match the schema: {problems}") from exc


CompleteFn = Callable[[list[Message], dict[str, Any]], Awaitable[Completion]]


async def json_with_repair(send: CompleteFn, messages: list[Message], model: type[T]) -> JSONResult[T]:
    """Ask for ``model`` as JSON through ``send(messages, schema)``; on a parse or schema error
    ask once more with the error appended; return the value or a typed failure with the raw
    texts. Shared by :meth:`LLMClient.complete_json` and the harness sandbox's proxy."""
    schema = model_schema(model)
    raws: list[str] = []
    error = ""
    convo = list(messages)
    for attempt in range(2):
        comp = await send(convo, schema)
        raws.append(comp.text)
        try:
            return JSONResult(parse_json_output(comp.text, model), raws)
        except ValueError as exc:
            error = str(exc)
            if comp.finish_reason == "length":
                error += " (the reply was cut off at max_tokens: be more concise)"
        if attempt == 0:
            convo = convo + [
                {"role": "assistant", "content": comp.text},
                {
                    "role": "user",
                    "content": f"Your reply could not be used: {error}\n"
                    "Reply again with only one JSON object that matches the required schema.",
                },
            ]
    return JSONResult(None, raws, error)


@functools.lru_cache(maxsize=128)
def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The flat JSON schema of a pydantic model, computed once per model class (it is on the
    hot path: one per structured call)."""
    return inline_schema(model.model_json_schema())


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Resolve local ``$ref``/``$defs`` of a pydantic JSON schema and drop ``title`` keys,
    so grammar converters that do not follow references (llama.cpp) get a flat schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].split("/")[-1]])
            return {k: walk(v) for k, v in node.items() if k not in ("$defs", "title")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def response_format(json_mode: str, schema: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The ``response_format`` request field for an endpoint's ``json_mode``."""
    if schema is None or json_mode == "none":
        return None
    if json_mode == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


class LLMClient:
    """Async client for all roles.

    Args:
        cfg: endpoints, roles and seed.
        base_urls: endpoint name -> base URL for endpoints whose ``base_url`` is ``None``
            (filled in by the backend that started the server).
        cache: response cache, or ``None`` to disable caching.
        call_log: path of ``calls.jsonl`` (one line per call), or ``None``.

    Raises:
        ConfigError: an endpoint has no base URL, or its API-key variable is unset.
    """

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        base_urls: dict[str, str] | None = None,
        cache: ResponseCache | None = None,
        call_log: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.usage = UsageMeter()
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self._sems: dict[str, asyncio.Semaphore] = {}
        base_urls = base_urls or {}
        for name, ep in cfg.endpoints.items():
            url = ep.base_url or base_urls.get(name)
            if not url:
                raise ConfigError(
                    f"llm.endpoints.{name}.base_url is not set and no backend started a server for it: "
                    "set base_url, or use llm=local / llm=vllm"
                )
            key = "sk-local"
            if ep.api_key_env:
                key = os.environ.get(ep.api_key_env, "")
                if not key:
                    raise ConfigError(
                        f"llm.endpoints.{name}.api_key_env={ep.api_key_env!r}: that environment variable is empty; "
                        f"export {ep.api_key_env}=..."
                    )
            # openai's own httpx2-based client: the legacy httpx/httpcore 1.x pool does work
            # quadratic in its connections and cost ~18 ms CPU per call at 64 in flight
            # (experiments/bench/README.md). The semaphore caps requests at max_in_flight, so
            # the pool needs no more connections than that.
            http = openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=ep.max_in_flight, max_keepalive_connections=ep.max_in_flight),
                timeout=ep.timeout_s,
            )
            self._clients[name] = openai.AsyncOpenAI(
                base_url=url, api_key=key, max_retries=ep.max_retries, timeout=ep.timeout_s, http_client=http
            )
            self._sems[name] = asyncio.Semaphore(ep.max_in_flight)
        self._log = call_log.open("a", encoding="utf-8", buffering=1) if call_log else None

    async def complete(
        self,
        role: str,
        messages: list[Message],
        *,
        sample_index: int = 0,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "output",
    ) -> Completion:
        """One chat completion for ``role``, from the cache when possible.

        Args:
            role: one of :data:`inner.config.ROLES` (or a meta role configured the same way).
            messages: OpenAI chat messages.
            sample_index: distinguishes repeated samples of the same prompt (cache key and
                seed ``llm.seed + sample_index``).
            json_schema: constrain the output to this JSON schema where the endpoint supports it.

        Raises:
            LLMCallError: the request failed after the endpoint's retries (status kept).
        """
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
        key = cache_key(
            {
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
            )
        else:
            comp = await self._request(role, rc.endpoint, messages, params, rf)
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "role": role,
                        "model": ep.model,
                        "text": comp.text,
                        "prompt_tokens": comp.prompt_tokens,
                        "completion_tokens": comp.completion_tokens,
                        "finish_reason": comp.finish_reason,
                    },
                )
        self.usage.record(role, comp)
        for meter in _TRACKERS.get():
            meter.record(role, comp)
        self._write_log(role, rc.endpoint, key, comp, None)
        return comp

    async def _request(
        self,
        role: str,
        endpoint: str,
        messages: list[Message],
        params: dict[str, Any],
        rf: dict[str, Any] | None,
    ) -> Completion:
        body: dict[str, Any] = {"messages": messages, **params}
        if rf is not None:
            body["response_format"] = rf
        async with self._sems[endpoint]:
            t0 = time.perf_counter()
            try:
                # client.post with cast_to=dict (openai's documented way to call any route) keeps
                # openai's retries, backoff and timeouts but skips building a pydantic
                # ChatCompletion and re-walking the messages: a third of the per-call CPU.
                resp = await self._clients[endpoint].post(
                    "/chat/completions", body=body, cast_to=dict, options={"headers": {ROLE_HEADER: role}}
                )
            except openai.APIStatusError as exc:
                self._fail(role, endpoint, exc.status_code, exc)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                self._fail(role, endpoint, None, exc)
            latency = time.perf_counter() - t0
        choices = resp.get("choices") if isinstance(resp, dict) else None
        if not choices:
            self._fail(role, endpoint, None, ValueError(f"response has no choices: {str(resp)[:200]}"))
        choice = choices[0]
        usage = resp.get("usage") or {}
        return Completion(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            latency_s=latency,
            finish_reason=choice.get("finish_reason"),
        )

    def _fail(self, role: str, endpoint: str, status: int | None, exc: Exception) -> None:
        self.usage.roles[role].failures += 1
        for meter in _TRACKERS.get():
            meter.roles[role].failures += 1
        ep = self.cfg.endpoints[endpoint]
        what = f"HTTP {status}" if status else type(exc).__name__
        self._write_log(role, endpoint, None, None, what)
        raise LLMCallError(
            f"{role} call to endpoint {endpoint!r} ({ep.model}) failed after {ep.max_retries} retries: {what}: {exc}",
            role=role,
            status=status,
        ) from exc

    async def complete_json(
        self, role: str, messages: list[Message], model: type[T], *, sample_index: int = 0
    ) -> JSONResult[T]:
        """A completion parsed into the pydantic ``model``.

        Sends the model's JSON schema as ``response_format`` where the endpoint supports it.
        If the reply does not parse or validate, asks once more with the validation error
        appended; if that fails too, returns a :class:`JSONResult` with ``value=None``, the
        raw texts and the error (never raises for bad output).

        Raises:
            LLMCallError: a request failed after retries (a transport problem, not bad output).
        """

        async def send(convo: list[Message], schema: dict[str, Any]) -> Completion:
            return await self.complete(
                role,
                convo,
                sample_index=sample_index,
                json_schema=schema,
                schema_name=model.__name__,
            )

        return await json_with_repair(send, messages, model)

    def _write_log(self, role: str, endpoint: str, key: str | None, comp: Completion | None, error: str | None) -> None:
        if self._log is None:
            return
        line = {
            "t": round(time.time(), 3),
            "role": role,
            "endpoint": endpoint,
            "key": key,
            "error": error,
        }
        if comp is not None:
            line |= {
                "cached": comp.cached,
                "prompt_tokens": comp.prompt_tokens,
                "completion_tokens": comp.completion_tokens,
                "latency_s": round(comp.latency_s, 4),
                "finish_reason": comp.finish_reason,
            }
        self._log.write(json.dumps(line) + "\n")

    async def aclose(self) -> None:
        """Close the HTTP connections and the call log."""
        for c in self._clients.values():
            await c.close()
        if self._log:
            self._log.close()
            self._log = None
