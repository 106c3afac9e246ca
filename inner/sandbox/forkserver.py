"""The warm sandbox (parent side, ``inner.sandbox_mode=fork``): one fork server per (harness
directory, run) that forks a pristine, sealed process per document, instead of a new bubblewrap
sandbox and a new Python per document (:class:`inner.sandbox.process.SandboxProcess`,
``inner.sandbox_mode=fresh``).

:class:`ForkServer` starts ``python -I /sdk/inner/sdk/forkserver.py /harness`` in a bubblewrap
sandbox built like a fresh one (:func:`inner.sandbox.process.sandbox_command`: the same
read-only mounts, cleared environment, empty network namespace, ``--die-with-parent``), except
that the server keeps ``CAP_SYS_ADMIN`` and ``CAP_SETPCAP`` inside the sandbox's own user
namespace, which it needs to give each document its own namespaces. It has imported the
standard library, pydantic and the harness SDK, never the harness. :class:`ForkedSandbox` is
one document: the server forks it into new pid, mount, network, IPC and UTS namespaces with a
private ``/tmp``, ``/dev/shm`` and ``/proc``; the parent moves it into the document's own cgroups
(``pids``, ``memory``) before it may go on; it sets its rlimits (``RLIMIT_AS``, ``RLIMIT_CPU``,
``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``), drops every capability, imports the harness and serves
one document over its own pipes, like a fresh sandbox (:mod:`inner.sdk.forkserver` has the
details). At the end, or on a timeout, the parent kills the document's pid 1 through a pidfd
(so a recycled pid is never hit): its whole pid namespace dies with it, and the cgroups are
emptied and removed as for a fresh sandbox.

What differs from a fresh sandbox, for a harness: the Python interpreter was started once per
run (so ``PYTHONHASHSEED``-dependent orders are the same across documents; ``random`` is
reseeded at every fork), the pids cgroup counts two sandbox processes (not three), the empty
mount point :data:`inner.sdk.forkserver.HOST_PROC` exists, and ``/proc/sys`` is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any

from inner.sandbox import process
from inner.sandbox.process import (
    _Cgroups,
    describe_exit,
    drain_to_log,
    read_message,
    sandbox_command,
    server_preexec,
)
from inner.sdk.errors import SandboxError

#: seconds the fork server may take to start (a fresh Python importing pydantic and the SDK)
SERVER_START_S = 60.0
#: seconds a fork may take until the document's pid 1 says hello
FORK_S = 30.0


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _recv(sock: socket.socket) -> tuple[bytes, int | None]:
    """One datagram from a non-blocking ``SOCK_SEQPACKET`` socket with ``SO_PASSCRED``, and the
    sender's pid in this process's pid namespace (``None`` without credentials). ``b""``: closed."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, anc, _, _ = sock.recvmsg(256, socket.CMSG_SPACE(struct.calcsize("3i")))
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        except (ConnectionResetError, OSError):
            return b"", None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
        return data, pid


def _make_cgroups(max_procs: int, memory_mb: int, pid: int) -> _Cgroups:
    """A document's cgroups with ``pid`` moved into them."""
    cgroup = _Cgroups(max_procs, memory_mb)
    cgroup.add(pid)
    return cgroup


class ForkServer:
    """The warm sandbox of one harness directory for one run (started on the first document).

    Args:
        harness_dir: the harness directory (mounted read-only at ``/harness``).
        memory_mb: the server's own address-space limit, MiB (``inner.harness_memory_mb``).
        log_path: file that receives the server's stderr (appended, at most ``log_bytes``).

    Raises:
        SandboxError: bubblewrap is missing or unusable, or the server did not start (from
            :meth:`fork`).
    """

    def __init__(
        self,
        harness_dir: Path,
        *,
        memory_mb: int = process.DEFAULT_MEMORY_MB,
        log_path: Path | None = None,
        log_bytes: int = process.DEFAULT_LOG_BYTES,
    ) -> None:
        self.harness_dir = Path(harness_dir)
        self.memory_mb, self.log_path, self.log_bytes = memory_mb, log_path, log_bytes
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self._lock: asyncio.Lock | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the server now (else the first :meth:`fork` does), so that its start-up (a
        Python importing pydantic, about 0.4 s of CPU) is not charged to a document's wall clock.

        Raises:
            SandboxError: bubblewrap is missing or unusable, or the server cannot build a
                document's namespaces here.
        """
        await self._ensure()

    async def _ensure(self) -> socket.socket:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.sock is not None and self.proc is not None and self.proc.returncode is None:
                return self.sock
            await self.aclose()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *sandbox_command(self.harness_dir, fork_server=True),
                    stdin=theirs, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                    preexec_fn=server_preexec(self.memory_mb), start_new_session=True,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                )  # fmt: skip
            finally:
                theirs.close()
            assert self.proc.stderr is not None
            self._stderr_task = asyncio.create_task(drain_to_log(self.proc.stderr, self.log_path, self.log_bytes))
            ours.setblocking(False)
            try:
                msg, _ = await asyncio.wait_for(_recv(ours), SERVER_START_S)
            except TimeoutError:
                msg = b""
            if msg != b"ready":
                ours.close()
                code = self.proc.returncode
                await self.aclose()
                why = (
                    "could not build a document's namespaces and mounts here"
                    if msg == b"failed"
                    else f"did not start within {SERVER_START_S:g} s (exit code {code})"
                )
                raise SandboxError(
                    f"the sandbox's fork server {why}; its stderr is in sandbox.log. "
                    "inner.sandbox_mode=fresh starts a fresh sandbox per document instead"
                )
            self.sock = ours
            return ours

    async def fork(self, fds: list[int], spec: dict[str, int]) -> None:
        """Ask the server to fork one document with these four descriptors (stdin read end,
        stdout and stderr write ends, its control socket); the server starts on the first call
        and is restarted once if it died.

        Raises:
            SandboxError: the server cannot be started or does not take the request.
        """
        data = json.dumps({"t": "fork", **spec}).encode()
        for attempt in range(2):
            sock = await self._ensure()
            deadline = asyncio.get_running_loop().time() + FORK_S
            try:
                while True:
                    try:
                        socket.send_fds(sock, [data], fds)
                        return
                    except BlockingIOError:
                        if asyncio.get_running_loop().time() > deadline:
                            raise SandboxError(f"the sandbox's fork server took no request for {FORK_S:g} s") from None
                        await asyncio.sleep(0.005)
            except OSError:  # the server is gone: start another one
                if attempt:
                    raise SandboxError(
                        "the sandbox's fork server died twice in a row (its stderr is in sandbox.log)"
                    ) from None
                if self.proc is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.proc.wait(), 5)

    async def aclose(self) -> None:
        """Stop the server (it exits when its control socket closes; killed after 10 s)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.proc.wait(), 10)
            transport = getattr(self.proc, "_transport", None)
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            self.proc = None
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 2)
            self._stderr_task = None


class ForkedSandbox:
    """One document forked by a :class:`ForkServer`: the interface of
    :class:`inner.sandbox.process.SandboxProcess` (:meth:`start`, :meth:`readline`,
    :meth:`send`, :meth:`wait`, :meth:`exit_description`, :meth:`kill`).

    Args:
        server: the run's fork server.
        memory_mb / cpu_s / max_procs: resource limits (``inner.harness_*``).
        log_path: file that receives the harness's stderr (appended, at most ``log_bytes``).
        tmp_mb: size of the document's private ``/tmp``, MiB.
    """

    def __init__(
        self,
        server: ForkServer,
        *,
        memory_mb: int = process.DEFAULT_MEMORY_MB,
        cpu_s: int = process.DEFAULT_CPU_S,
        max_procs: int = process.DEFAULT_MAX_PROCS,
        log_path: Path | None = None,
        log_bytes: int = process.DEFAULT_LOG_BYTES,
        tmp_mb: int = 64,
    ) -> None:
        self.server = server
        self.memory_mb, self.cpu_s, self.max_procs, self.tmp_mb = memory_mb, cpu_s, max_procs, tmp_mb
        self.log_path, self.log_bytes = log_path, log_bytes
        #: the document's pid 1 (host pid namespace), once it said hello
        self.pid: int | None = None
        #: like ``Popen.returncode``: ``-N`` for signal N, once the document ended
        self.returncode: int | None = None
        self._pidfd: int | None = None
        self._ctl: socket.socket | None = None
        self._stdout: asyncio.StreamReader | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._transports: list[asyncio.BaseTransport] = []
        #: the document's cgroups, made in a worker thread (finished or not)
        self._cgroup_job: asyncio.Future[_Cgroups] | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._exit_task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        """Fork the document and wait for its ``ready`` line (the harness imported).

        Returns:
            The ready message: ``{"ok": true}`` or ``{"ok": false, "error": ...}``.

        Raises:
            SandboxError: the fork server cannot be started, or could not fork this document
                (before any harness code ran: a failure of the machine, not of the harness).
        """
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ctl.setblocking(False)
        self._ctl = ctl
        try:
            stdout = asyncio.StreamReader(limit=process.MAX_LINE)
            t, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(out_r, "rb", 0))
            self._transports.append(t)
            self._stdout = stdout
            stderr = asyncio.StreamReader()
            t, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stderr), os.fdopen(err_r, "rb", 0))
            self._transports.append(t)
            self._stderr_task = asyncio.create_task(drain_to_log(stderr, self.log_path, self.log_bytes))
            t, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(in_w, "wb", 0))
            self._transports.append(t)
            self._stdin = asyncio.StreamWriter(t, proto, None, loop)  # type: ignore[arg-type]
            spec = {"memory_mb": self.memory_mb, "cpu_s": self.cpu_s, "tmp_mb": self.tmp_mb}
            await self.server.fork([in_r, out_w, err_w, theirs.fileno()], spec)
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            theirs.close()
        try:
            hello, pid = await asyncio.wait_for(_recv(ctl), FORK_S)
        except TimeoutError:
            hello, pid = b"", None
        if hello != b"hello" or pid is None:  # before any harness code: the machine's failure
            self.returncode = -signal.SIGKILL
            raise SandboxError(
                "the sandbox's fork server could not fork a document (its stderr is in sandbox.log); "
                "inner.sandbox_mode=fresh starts a fresh sandbox per document instead"
            )
        self.pid, self._pidfd = pid, os.pidfd_open(pid)
        # in a worker thread: moving a process into a cgroup v1 group waits in the kernel for
        # about 2 ms (RCU), time the event loop spends on other documents meanwhile
        self._cgroup_job = asyncio.ensure_future(asyncio.to_thread(_make_cgroups, self.max_procs, self.memory_mb, pid))
        await asyncio.shield(self._cgroup_job)  # cancelled here: kill() still waits for it and removes it
        ctl.send(b"go")
        self._exit_task = asyncio.create_task(self._watch_exit())
        line = await self.readline()
        if line is None:
            code = await self.wait()
            return {"ok": False, "error": f"the sandbox {describe_exit(code)} before the harness loaded"}
        if line.get("t") != "ready":
            return {"ok": False, "error": f"unexpected first message from the sandbox: {str(line)[:200]}"}
        return line

    async def _watch_exit(self) -> None:
        assert self._ctl is not None
        msg, _ = await _recv(self._ctl)
        if msg.startswith(b"exit "):
            self.returncode = os.waitstatus_to_exitcode(int(msg[5:]))
        else:  # its pid 1 was killed (by us, at the end of the document)
            self.returncode = -signal.SIGKILL

    async def _reaped(self, timeout: float) -> None:
        """Wait until the document's pid 1 has exited, which the kernel signals only once every
        process of its pid namespace is gone (its pidfd becomes readable)."""
        if self._pidfd is None:
            return
        loop, fd = asyncio.get_running_loop(), self._pidfd
        gone: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, gone)
        try:
            await asyncio.wait_for(gone, timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)

    async def wait(self) -> int:
        """Wait until the document's process has ended; returns :attr:`returncode`."""
        if self._exit_task is not None:
            await asyncio.shield(self._exit_task)
        return self.returncode if self.returncode is not None else -signal.SIGKILL

    async def readline(self) -> dict[str, Any] | None:
        """The next protocol message, or ``None`` at end of stream (as
        :meth:`inner.sandbox.process.SandboxProcess.readline`).

        Raises:
            HarnessError: the line is not a JSON object, is nested too deep or is too long.
        """
        assert self._stdout is not None
        return await read_message(self._stdout)

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one protocol message (ignored if the document is gone)."""
        if self._stdin is None or self.returncode is not None or self._stdin.is_closing():
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self._stdin.write((json.dumps(msg) + "\n").encode())
            await self._stdin.drain()

    def exit_description(self) -> str:
        """How the document's process ended, in words (for ``harness_error``)."""
        return describe_exit(self.returncode, bwrap=False)

    async def kill(self) -> None:
        """Kill the document's pid namespace (everything it started) and its cgroups, reap it."""
        if self._pidfd is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self._ctl is not None and self._exit_task is None:
            self._ctl.close()  # not yet told to go on: it exits by itself
        if self._exit_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._exit_task), 10)
        await self._reaped(10)
        job, self._cgroup_job = self._cgroup_job, None
        if job is not None:
            await asyncio.wait({job})
            if not job.cancelled() and job.exception() is None:
                await asyncio.to_thread(job.result().destroy)
        for t in self._transports:
            with contextlib.suppress(Exception):
                t.close()
        self._transports = []
        if self._exit_task is not None and not self._exit_task.done():
            self._exit_task.cancel()
            with contextlib.suppress(BaseException):
                await self._exit_task
        if self._ctl is not None:
            self._ctl.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 2)
