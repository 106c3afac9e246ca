"""A scripted OpenAI-compatible server on loopback (test double; tests and benchmarks only).

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) for the ``openai`` client:
``POST /v1/chat/completions`` and ``GET /v1/models``. Each completion is produced by a
*script*: ``script(role, body) -> Reply | str | dict``, where ``role`` is the request's
``X-Autodata-Role`` header and ``body`` the parsed JSON request. A ``dict`` is sent as JSON
content, a ``str`` as is; a :class:`Reply` can also set an HTTP error status, a delay, drop
the connection without answering, send a raw body (e.g. a gateway's HTML error page with
status 200), a completion with no choices, or extra headers (``Retry-After``). Every request is
recorded in ``server.requests``; ``server.peak_in_flight`` is the most completions it held at
once. With ``max_concurrent`` it works on at most that many completions at once (a server with
that many slots): the others wait their turn, as in a real server's queue.

Run in a thread (``with ScriptedServer(script) as url: ...``) for tests, or as a separate
process for benchmarks: ``python -m tests.scripted_server --script MODULE:FUNC --latency 0.2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        content: assistant message text (a dict is JSON-encoded).
        status: HTTP status; non-200 sends an OpenAI-style error body.
        delay_s: sleep before answering (to trigger client timeouts).
        drop: close the connection without any response.
        finish_reason: reported finish reason.
        raw_body: send exactly this body (with ``status`` and ``content_type``) instead of a
            chat completion or an error object.
        content_type: the ``content-type`` of ``raw_body``.
        no_choices: a 200 chat completion whose ``choices`` list is empty.
        headers: extra response headers, e.g. ``{"retry-after": "1"}``.
        tool_calls: OpenAI-style tool calls of the reply message (``[{"id", "type":
            "function", "function": {"name", "arguments"}}]``; ``arguments`` may be a dict, it
            is JSON-encoded); ``finish_reason`` becomes ``tool_calls`` unless set otherwise.
    """

    content: str | dict[str, Any] = ""
    status: int = 200
    delay_s: float = 0.0
    drop: bool = False
    finish_reason: str = "stop"
    raw_body: str | None = None
    content_type: str = "application/json"
    no_choices: bool = False
    headers: dict[str, str] | None = None
    tool_calls: list[dict[str, Any]] | None = None


Script = Callable[[str, dict[str, Any]], "Reply | str | dict[str, Any]"]


class ScriptedServer:
    """The server. ``latency_s`` is added to every completion (benchmarks).

    Args:
        script: produces each completion.
        latency_s: fixed delay per completion, seconds.
        port: 0 picks a free port.
        max_concurrent: completions worked on at once (0: no limit); the latency of the
            others starts when a slot frees.
    """

    def __init__(self, script: Script, *, latency_s: float = 0.0, port: int = 0, max_concurrent: int = 0) -> None:
        self.script = script
        self.latency_s = latency_s
        self.port = port
        self.max_concurrent = max_concurrent
        self.requests: list[tuple[str, dict[str, Any]]] = []
        #: completion requests received and not yet answered; the most at once
        self.in_flight = 0
        self.peak_in_flight = 0
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # -- inspection -------------------------------------------------------------------------
    def count(self, role: str | None = None) -> int:
        """Number of completion requests received (for ``role``, or all)."""
        with self._lock:
            return sum(1 for r, _ in self.requests if role is None or r == role)

    def roles(self) -> list[str]:
        with self._lock:
            return [r for r, _ in self.requests]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- HTTP ---------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                if method == "GET" and path.rstrip("/").endswith("/models"):
                    self._send(writer, 200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                elif method == "POST" and path.rstrip("/").endswith("/chat/completions"):
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    try:
                        async with self._slots or contextlib.nullcontext():
                            answered = await self._complete(writer, headers, body)
                    finally:
                        self.in_flight -= 1
                    if not answered:
                        return
                else:
                    self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
                await writer.drain()
        finally:
            writer.close()

    async def _complete(self, writer: asyncio.StreamWriter, headers: dict[str, str], raw: bytes) -> bool:
        req = json.loads(raw)
        role = headers.get("x-autodata-role", "unknown")
        with self._lock:
            self.requests.append((role, req))
        out = self.script(role, req)
        reply = out if isinstance(out, Reply) else Reply(content=out)
        if self.latency_s or reply.delay_s:
            await asyncio.sleep(self.latency_s + reply.delay_s)
        if reply.drop:
            writer.transport.abort()
            return False
        if reply.raw_body is not None:
            self._send(writer, reply.status, reply.raw_body, content_type=reply.content_type, headers=reply.headers)
            return True
        if reply.status != 200:
            self._send(
                writer,
                reply.status,
                {"error": {"message": f"scripted error {reply.status}", "type": "server_error"}},
                headers=reply.headers,
            )
            return True
        content = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish_reason = reply.finish_reason
        if reply.tool_calls:
            message["content"] = content or None
            message["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": c["function"]["arguments"]
                        if isinstance(c["function"]["arguments"], str)
                        else json.dumps(c["function"]["arguments"]),
                    },
                }
                for c in reply.tool_calls
            ]
            finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in req.get("messages", [])) // 4
        self._send(
            writer,
            200,
            {
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "scripted"),
                "choices": []
                if reply.no_choices
                else [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": max(1, len(content) // 4),
                    "total_tokens": prompt_tokens + max(1, len(content) // 4),
                },
            },
            headers=reply.headers,
        )
        return True

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any] | str,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(data)}\r\n"
            f"{extra}connection: keep-alive\r\n\r\n"
        )
        writer.write(head.encode() + data)

    # -- lifecycle ----------------------------------------------------------------------------
    async def serve(self) -> asyncio.base_events.Server:
        """Start listening on the current event loop (for the process mode)."""
        self._slots = asyncio.Semaphore(self.max_concurrent) if self.max_concurrent else None
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    async def _close(self) -> None:
        """Stop listening, then cancel and await every connection handler, so that none is left
        pending when the loop closes (its ``finally`` closing the writer on a closed loop was
        "Event loop is closed" / "Task was destroyed but it is pending" at garbage collection)."""
        if self._server is not None:
            self._server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let the closed transports run their connection_lost callbacks

    def start(self) -> str:
        """Start in a daemon thread; returns the base URL (``.../v1``)."""
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._thread = threading.Thread(target=run, name="scripted-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop(self) -> None:
        if self._loop is None:
            return

        self._loop.call_soon_threadsafe(self._loop.stop)  # run() then closes everything (_close)
        assert self._thread is not None
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--script", required=True, help="MODULE:FUNC producing completions")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every completion")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-concurrent", type=int, default=0, help="completions worked on at once (0: no limit)")
    ap.add_argument(
        "--servers",
        type=int,
        default=1,
        help="servers on their own free ports, sharing the one script (replicas of one endpoint); "
        "prints READY and every port",
    )
    args = ap.parse_args()
    mod, func = args.script.split(":")
    script = getattr(importlib.import_module(mod), func)
    servers = [
        ScriptedServer(
            script, latency_s=args.latency, port=args.port if i == 0 else 0, max_concurrent=args.max_concurrent
        )
        for i in range(args.servers)
    ]

    async def run() -> None:
        listening = [await server.serve() for server in servers]
        print("READY " + " ".join(str(server.port) for server in servers), flush=True)
        await asyncio.gather(*(srv.serve_forever() for srv in listening))

    asyncio.run(run())


if __name__ == "__main__":
    main()
