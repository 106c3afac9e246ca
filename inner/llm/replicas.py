"""Replicas of one endpoint: least-in-flight balancing, per-replica in-flight ceilings, and
failover with a cool-down.

An endpoint with ``base_urls: [...]`` (or the ``llm=vllm`` backend with ``replicas: N``) has
one :class:`Replica` per URL, each with its own ``openai`` client and its own ceiling of
``max_in_flight`` requests. :class:`ReplicaPool` hands each request the replica with the
fewest requests in flight (ties go round-robin) that is up and below its ceiling; when every
usable replica is at its ceiling the request waits, first come first served.

A request that fails on a replica because of the server (a connection error, a timeout, or
HTTP 408/409/429/5xx: what ``openai`` retries, after its ``max_retries``) takes that replica
out for ``replica_cooldown_s`` seconds (doubling with each consecutive take-out, up to
``replica_cooldown_max_s``) and is re-sent to a replica it has not tried yet, so nothing is
lost while one replica is up. Requests that were already in flight on a replica when it was
taken out do not take it out again. After its cool-down a replica is *probing*: it gets one
request at a time until one succeeds (then it is healthy again) or fails (then it is taken out
for twice as long). When no replica the request has not tried is up, the endpoint is down as
a whole: the request goes to one anyway, at its full ceiling, so an outage fails requests at
the pace one replica would (never a stall). A single replica is never taken out.

Counts per replica (``requests``, ``failures``, ``in_flight_peak``, ``taken_out``) go to
``stats.json`` (:meth:`ReplicaPool.counts`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

#: HTTP statuses after which the server, not the request, is at fault: ``openai`` retries
#: these (plus every 5xx), and a replica that still answers them after the retries is taken out.
SERVER_FAULT_STATUSES = frozenset({408, 409, 429})


def server_at_fault(kind: str, status: int | None) -> bool:
    """Whether a failed request (an :class:`~inner.sdk.errors.LLMCallError`'s ``kind`` and
    ``status``) says the replica, not the request, is at fault: ``connection``, ``timeout``,
    or ``status`` with HTTP 408, 409, 429 or 5xx. Such a request is re-sent to another replica."""
    if kind in ("connection", "timeout"):
        return True
    return kind == "status" and status is not None and (status >= 500 or status in SERVER_FAULT_STATUSES)


def display_url(url: str) -> str:
    """``url`` without user info (``https://user:pass@host`` -> ``https://host``): what may be
    written to logs and ``stats.json``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(eq=False)
class Replica:
    """One server of an endpoint.

    Attributes:
        index: position in the endpoint's ``base_urls``.
        url: base URL (``.../v1``).
        client: its ``openai.AsyncOpenAI`` client (own connection pool).
        max_in_flight: its ceiling of requests in flight.
        in_flight: requests in flight now.
        requests: requests sent to it (once each, however often ``openai`` retried it).
        failures: requests that ended in an error on it, after ``openai``'s retries.
        in_flight_peak: most requests it had in flight at once.
        taken_out: times it was taken out.
        down_until: ``time.monotonic()`` until which it is out; in the past when up.
        probing: back from a cool-down, no request has succeeded on it since.
        strikes: consecutive take-outs (the cool-down doubles with each; 0 after a success).
        generation: take-outs so far; a request that began before the last take-out does not
            take the replica out again.
    """

    index: int
    url: str
    client: Any
    max_in_flight: int
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    in_flight_peak: int = 0
    taken_out: int = 0
    down_until: float = 0.0
    probing: bool = False
    strikes: int = 0
    generation: int = 0

    def counts(self) -> dict[str, Any]:
        """``{"url", "requests", "failures", "in_flight_peak", "taken_out"}`` (the URL
        without user info)."""
        return {
            "url": display_url(self.url),
            "requests": self.requests,
            "failures": self.failures,
            "in_flight_peak": self.in_flight_peak,
            "taken_out": self.taken_out,
        }


class ReplicaPool:
    """The replicas of one endpoint and the requests waiting for one (see the module docstring).

    Args:
        endpoint: the endpoint's name (for logs).
        replicas: its replicas, at least one, ``index`` = position.
        cooldown_s: first cool-down of a failing replica, seconds.
        cooldown_max_s: longest cool-down, seconds.
    """

    def __init__(self, endpoint: str, replicas: list[Replica], *, cooldown_s: float, cooldown_max_s: float) -> None:
        if not replicas:
            raise ValueError(f"endpoint {endpoint!r} has no replica")
        self.endpoint = endpoint
        self.replicas = replicas
        self.cooldown_s = cooldown_s
        self.cooldown_max_s = cooldown_max_s
        self._next = 0  # round-robin start among equally loaded replicas
        self._waiters: collections.deque[tuple[asyncio.Future[Replica], frozenset[int]]] = collections.deque()
        self._timers: list[asyncio.TimerHandle] = []

    # -- choosing a replica ----------------------------------------------------------------------
    def _pick(self, tried: frozenset[int]) -> Replica | None:
        """The replica for a request that already failed on ``tried``, or ``None`` if it must
        wait. Least in flight among the untried replicas that are up and below their ceiling
        (a probing replica's ceiling is 1 while another replica is healthy); if no untried
        replica is up, among the untried ones at their full ceiling."""
        now = time.monotonic()
        reps = self.replicas
        n = len(reps)
        healthy = any(r.down_until <= now and not r.probing for r in reps)
        untried_up = any(r.index not in tried and r.down_until <= now for r in reps)
        best: Replica | None = None
        for k in range(n):
            r = reps[(self._next + k) % n]
            if r.index in tried:
                continue
            if untried_up:
                if r.down_until > now:
                    continue
                cap = 1 if r.probing and healthy else r.max_in_flight
            else:  # every untried replica is out: the endpoint is down, try anyway
                cap = r.max_in_flight
            if r.in_flight < cap and (best is None or r.in_flight < best.in_flight):
                best = r
        return best

    def _take(self, r: Replica) -> Replica:
        r.in_flight += 1
        r.requests += 1
        r.in_flight_peak = max(r.in_flight_peak, r.in_flight)
        self._next = (r.index + 1) % len(self.replicas)
        return r

    async def acquire(self, tried: frozenset[int] = frozenset()) -> Replica:
        """A replica for one request (its ``in_flight`` already counted), waiting first come
        first served while every usable replica is at its ceiling. ``tried``: indices of the
        replicas this request already failed on (at least one replica must be left).
        Pair with :meth:`release`."""
        if len(tried) >= len(self.replicas):
            raise ValueError(f"endpoint {self.endpoint!r}: every replica was tried")
        if not self._waiters:
            r = self._pick(tried)
            if r is not None:
                return self._take(r)
        fut: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        entry = (fut, tried)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a replica just as it was cancelled
                self.release(fut.result())
            else:
                self._waiters.remove(entry)
            raise

    def _dispatch(self) -> None:
        """Hand free capacity to the waiting requests, oldest first."""
        while self._waiters:
            if all(r.in_flight >= r.max_in_flight for r in self.replicas):
                return  # saturated: the common case under load, decided without a scan
            served = False
            for entry in list(self._waiters):
                fut, tried = entry
                if fut.done():
                    self._waiters.remove(entry)
                    continue
                r = self._pick(tried)
                if r is not None:
                    self._waiters.remove(entry)
                    fut.set_result(self._take(r))
                    served = True
                    break
            if not served:
                return

    # -- outcomes --------------------------------------------------------------------------------
    def release(self, r: Replica, *, ok: bool | None = None, failed: bool = False, generation: int = -1,
                error: str = "") -> None:  # fmt: skip
        """End one request on ``r``.

        Args:
            r: the replica :meth:`acquire` returned.
            ok: ``True``: it succeeded (a probing replica is healthy again). ``None``: it
                neither succeeded nor failed on the server's account (cancelled).
            failed: it ended in an error on ``r`` (counted in ``failures``).
            generation: with ``failed`` and the server at fault: ``r.generation`` when the
                request began; ``r`` is taken out unless it was taken out since, or it is the
                endpoint's only replica. ``-1``: the failure does not take it out.
            error: what went wrong, for the log.
        """
        r.in_flight -= 1
        if ok:
            r.probing, r.strikes = False, 0
        if failed:
            r.failures += 1
            if generation == r.generation and len(self.replicas) > 1:
                self._take_out(r, error)
        self._dispatch()

    def _take_out(self, r: Replica, error: str) -> None:
        r.strikes += 1
        r.generation += 1
        r.taken_out += 1
        cool = min(self.cooldown_s * 2 ** (r.strikes - 1), self.cooldown_max_s)
        r.down_until = time.monotonic() + cool
        r.probing = True
        log.warning(
            "endpoint %r: replica %d (%s) taken out for %.0f s (take-out %d in a row): %s",
            self.endpoint, r.index, display_url(r.url), cool, r.strikes, error[:300],
        )  # fmt: skip
        # waiting requests may use it again once the cool-down is over
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > loop.time()]
        self._timers.append(loop.call_later(cool, self._dispatch))

    def counts(self) -> list[dict[str, Any]]:
        """Per replica, in ``base_urls`` order: :meth:`Replica.counts`."""
        return [r.counts() for r in self.replicas]

    def close(self) -> None:
        """Cancel the cool-down timers (the pool is done)."""
        for t in self._timers:
            t.cancel()
        self._timers.clear()
