"""The warm sandbox's own failure paths (issue 18; ``inner.sandbox_mode=fork``): a fork server
that cannot seal a document here refuses to start, naming the fallback; a server that died is
replaced; a bad mode is refused. What a harness can do inside is in ``tests/test_hostile.py``
(every test there runs in fork mode, the default; the isolation test in both modes)."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from inner.config import InnerConfig
from inner.sandbox import forkserver
from inner.sandbox.forkserver import ForkedSandbox, ForkServer
from inner.sdk.errors import ConfigError, SandboxError
from inner.sdk.forkserver import HOST_PROC

pytestmark = pytest.mark.skipif(not os.access("/sys/fs/cgroup", os.R_OK), reason="Linux only")


def _harness(tmp_path: Path) -> Path:
    d = tmp_path / "h"
    d.mkdir()
    (d / "harness.py").write_text(
        textwrap.dedent(
            """
            import os

            async def run(agent):
                await agent.note(str(os.getpid()))
            """
        )
    )
    return d


async def _one_document(server: ForkServer) -> dict[str, Any]:
    """Fork one document, run it to its first request, kill it; the request."""
    sb = ForkedSandbox(server)
    try:
        ready = await sb.start()
        assert ready.get("ok"), ready
        await sb.send({"t": "run", "doc": {"doc_id": "d", "title": "t", "text": "x"}, "domain": "d",
                       "max_rounds": 1, "budget": {}})  # fmt: skip
        msg = await sb.readline()
        assert msg is not None
        return msg
    finally:
        await sb.kill()


def test_a_dead_fork_server_is_replaced(tmp_path):
    async def go() -> None:
        server = ForkServer(_harness(tmp_path), log_path=tmp_path / "sandbox.log")
        try:
            await server.start()
            first = await _one_document(server)
            assert first["op"] == "note"
            assert server.proc is not None
            os.killpg(server.proc.pid, signal.SIGKILL)  # the whole bubblewrap sandbox
            await server.proc.wait()
            second = await _one_document(server)  # started again, transparently
            assert second["op"] == "note" and server.proc.returncode is None
        finally:
            await server.aclose()

    asyncio.run(go())


def test_a_machine_where_documents_cannot_be_sealed_refuses_fork_mode(tmp_path, monkeypatch):
    real = forkserver.sandbox_command

    def without_host_proc(*args: Any, **kw: Any) -> list[str]:
        cmd = real(*args, **kw)
        i = cmd.index(HOST_PROC)
        return cmd[: i - 2] + cmd[i + 1 :]  # no unobscured /proc: a document's /proc cannot be mounted

    monkeypatch.setattr(forkserver, "sandbox_command", without_host_proc)

    async def go() -> None:
        server = ForkServer(_harness(tmp_path), log_path=tmp_path / "sandbox.log")
        try:
            with pytest.raises(SandboxError, match=r"could not build a document's namespaces.*sandbox_mode=fresh"):
                await server.start()
        finally:
            await server.aclose()

    asyncio.run(go())
    assert "mount /proc" in (tmp_path / "sandbox.log").read_text()


def test_unknown_sandbox_mode_is_refused():
    with pytest.raises(ConfigError, match=r"inner.sandbox_mode='threads' is invalid: use one of \('fork', 'fresh'\)"):
        InnerConfig(sandbox_mode="threads")
