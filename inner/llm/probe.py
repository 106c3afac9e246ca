"""Check the LLM endpoints once, before any document starts.

A wrong ``base_url`` (a typo, a stopped server, a missing ``/v1``) or a wrong key would
otherwise fail every document with the same "Connection error", one after the other, and the
run would end in error. :func:`probe_endpoints` checks each endpoint a role uses: the URL's
syntax, then one ``GET <base_url>/models`` with a short timeout, and raises one clear error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from urllib.parse import urlsplit

import httpx2

from inner.config import LLMConfig
from inner.llm.client import endpoint_urls
from inner.sdk.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

#: seconds to wait for ``GET /models`` (a healthy server answers in milliseconds)
PROBE_TIMEOUT_S = 5.0


def used_endpoints(cfg: LLMConfig) -> list[str]:
    """Names of the endpoints some role uses (roles left ``None`` use the challenger's)."""
    names = []
    for f in fields(cfg.roles):
        role = getattr(cfg.roles, f.name) or cfg.roles.challenger
        if role.endpoint not in names:
            names.append(role.endpoint)
    return names


def check_base_url(key: str, url: str) -> None:
    """Raise ConfigError unless ``url`` is an ``http(s)://host[:port][/path]`` URL.

    Args:
        key: the config key it came from, for the message (``llm.endpoints.<name>.base_url``).
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(f"{key}={url!r} is invalid: {exc}; use e.g. http://127.0.0.1:8000/v1") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{key}={url!r} is invalid: it must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1"
        )
    if port == 0:
        raise ConfigError(f"{key}={url!r} is invalid: port 0")


def probe_endpoints(
    cfg: LLMConfig, base_urls: Mapping[str, str | list[str]] | None = None, *, timeout_s: float = PROBE_TIMEOUT_S
) -> None:
    """Check every endpoint a role uses, once: URL syntax, then ``GET <base_url>/models``
    (every replica of an endpoint with ``base_urls``: a typo in one is found up front).

    Call it after the backend is up and before the first document. A reachable endpoint that
    answers ``/models`` with an unexpected status (404 from a gateway without that route,
    5xx) or without the configured model only logs a warning: the completions themselves may
    still work.

    Args:
        cfg: the LLM config (endpoints, roles, API-key variables).
        base_urls: endpoint name -> URL (or replica URLs) for endpoints with neither
            ``base_url`` nor ``base_urls`` (what the backend started).
        timeout_s: seconds per probe.

    Raises:
        ConfigError: a missing or malformed base URL; an empty API-key variable; the endpoint
            refuses the key (HTTP 401/403).
        BackendError: the endpoint cannot be reached (connection refused, unknown host, TLS
            failure, no answer within ``timeout_s``).
    """
    for name in used_endpoints(cfg):
        ep = cfg.endpoints[name]
        urls = endpoint_urls(cfg, name, base_urls)
        keys = [
            f"llm.endpoints.{name}.base_urls[{i}]" if ep.base_urls
            else f"llm.endpoints.{name} (replica {i} of the backend)" if len(urls) > 1
            else f"llm.endpoints.{name}.base_url"
            for i in range(len(urls))
        ]  # fmt: skip
        for key, url in zip(keys, urls, strict=True):
            check_base_url(key, url)
        api_key = "sk-local"
        if ep.api_key_env:
            api_key = os.environ.get(ep.api_key_env, "")
            if not api_key:
                raise ConfigError(
                    f"llm.endpoints.{name}.api_key_env={ep.api_key_env!r}: that environment variable is empty; export {ep.api_key_env}=..."
                )
        for key, url in zip(keys, urls, strict=True):
            _probe(name, ep.model, ep.api_key_env, key, url, api_key, timeout_s)


def _probe(name: str, model: str, api_key_env: str | None, key: str, url: str, api_key: str, timeout_s: float) -> None:
    """``GET <url>/models`` for endpoint ``name`` (one replica); see :func:`probe_endpoints`."""
    models_url = url.rstrip("/") + "/models"
    try:
        resp = httpx2.get(models_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s)
    except httpx2.TimeoutException as exc:
        raise BackendError(
            f"endpoint {name!r} at {url} did not answer GET /models within {timeout_s:g} s ({type(exc).__name__}); "
            f"is the server up and is {key} right?"
        ) from exc
    except httpx2.HTTPError as exc:
        raise BackendError(
            f"endpoint {name!r} at {url} cannot be reached: {type(exc).__name__}: {exc}; "
            f"check {key} (host, port, http vs https) and that the server is running"
        ) from exc
    if resp.status_code in (401, 403):
        raise ConfigError(
            f"endpoint {name!r} at {url} refused the API key (HTTP {resp.status_code} on GET /models); "
            f"check llm.endpoints.{name}.api_key_env ({api_key_env or 'unset: a placeholder key is sent'})"
        )
    if resp.status_code != 200:
        hint = " (does base_url end in /v1?)" if resp.status_code == 404 else ""
        log.warning("endpoint %r at %s answered GET /models with HTTP %d%s", name, url, resp.status_code, hint)
        return
    try:
        served = [m.get("id") for m in resp.json().get("data", []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        log.warning("endpoint %r at %s answered GET /models with a body that is not a model list", name, url)
        return
    if served and model not in served:
        log.warning(
            "endpoint %r at %s does not list model %r (llm.endpoints.%s.model); it serves %s",
            name,
            url,
            model,
            name,
            ", ".join(map(str, served[:10])) + (" ..." if len(served) > 10 else ""),
        )
