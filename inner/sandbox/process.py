"""The sealed harness sandbox (parent side): every line of harness code runs here, never in
the evaluator's process, on every path (``autodata-generate harness=...`` and
``autodata-evolve`` alike).

One sandbox process per document, started with bubblewrap (Debian's ``bubblewrap``, installed
by ``make install``) as ``python -I /sdk/inner/sdk/child.py /harness`` (:class:`SandboxProcess`,
``inner.sandbox_mode=fresh``; the default, ``fork``, forks each document from a warm server in
such a sandbox with the same seals and its own namespaces: :mod:`inner.sandbox.forkserver`):

- **privileges**: no capabilities at all (``--cap-drop ALL``), no nested user namespaces, so
  nothing can be remounted writable;
- **file system**: a fresh read-only root with read-only ``/usr`` (and the ``/bin``, ``/lib`` links),
  the Python installation and the virtual environment's packages, the harness SDK at ``/sdk``
  (:mod:`inner.sdk.contract`, :mod:`inner.sdk.templates`, :mod:`inner.sdk.errors`,
  :mod:`inner.sdk.child`; no other project source), the harness directory read-only at
  ``/harness``, a private size-limited ``/tmp`` as its working directory and a small
  ``/dev/shm``; ``/`` and ``/dev`` are read-only. The run
  directory, records, lineage, ``splits.json``, the corpus, the project sources, ``$HOME`` and
  ``/etc`` do not exist inside;
- **environment**: cleared (no API keys, tokens or proxy variables); ``PATH``, ``HOME=/tmp``
  and ``LANG`` only;
- **network**: a new, empty network namespace (not even the parent's loopback ports);
- **processes**: new PID, IPC, UTS and user namespaces and a new session; the whole sandbox
  dies with its parent (``--die-with-parent``) and is killed whole when the document ends;
  cgroups cap its process count (``pids``) and its memory in total (``memory``) where the
  cgroup v1 hierarchies are writable, as on these machines;
- **resources**: ``RLIMIT_AS`` (memory per process), ``RLIMIT_CPU`` (CPU seconds),
  ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``, the memory cgroup (all processes together, tmpfs
  included), and the wall-clock limit enforced by :mod:`inner.engine.loop`;
- **LLM access**: only through the parent (:class:`inner.engine.loop.DocumentSession`), restricted
  to the harness roles and a per-document budget of calls and tokens.

Not contained: CPU contention (a busy harness shares the cores with the run until its CPU or
wall-clock limit kills it), and what the harness writes to its own stderr (kept, up to a size
limit, in ``sandbox.log`` of the run directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from inner.paths import PROJECT_ROOT
from inner.sdk import HARNESS_MODULES, SDK_DIR
from inner.sdk.errors import HarnessError, SandboxError
from inner.sdk.forkserver import HOST_PROC
from inner.sdk.protocol import ProtocolError, decode_line

log = logging.getLogger(__name__)

PIDS_CGROUP = Path("/sys/fs/cgroup/pids")
#: a protocol line longer than this (bytes) is a misbehaving harness
MAX_LINE = 1 << 26


@functools.lru_cache(maxsize=1)
def sdk_dir() -> Path:
    """A private copy of the harness SDK, made once per process: ``<tmp>/inner/sdk/`` (a copy of
    :data:`inner.sdk.SDK_DIR`, sources only) and the harness-facing aliases ``inner/contract.py``,
    ``inner/templates.py``, ``inner/errors.py`` (:data:`inner.sdk.HARNESS_MODULES`). No other
    project source exists in the sandbox."""
    root = Path(tempfile.mkdtemp(prefix="autodata-sdk-"))
    pkg = root / "inner"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""The harness SDK inside the sandbox (a subset of inner/)."""\n')
    shutil.copytree(SDK_DIR, pkg / "sdk", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in HARNESS_MODULES:
        shutil.copy2(PROJECT_ROOT / "inner" / f"{name}.py", pkg / f"{name}.py")
    return root


@functools.lru_cache(maxsize=1)
def bwrap_path() -> str:
    """The ``bwrap`` executable.

    Raises:
        SandboxError: bubblewrap is not installed, or cannot create namespaces here.
    """
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(
            "bubblewrap (`bwrap`) is required to run harness code sealed: run `make install` "
            "(it installs Debian's bubblewrap) or `apt-get install bubblewrap`"
        )
    import subprocess

    probe = subprocess.run(
        [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        raise SandboxError(
            f"bubblewrap cannot create namespaces on this machine ({probe.stderr.strip()[:200]}); "
            "harness code cannot be sealed here"
        )
    return path


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    prefixes = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    exe = Path(sys.executable)
    prefixes.add(exe.resolve().parent.parent)
    for prefix in sorted(prefixes):
        if not str(prefix).startswith("/usr"):
            args += ["--ro-bind", str(prefix), str(prefix)]
    # a venv reached through a symlinked path (python -> /root/.pyenv/...) keeps its own path
    if Path(sys.prefix) != Path(sys.prefix).resolve():
        args += ["--ro-bind", str(Path(sys.prefix).resolve()), str(Path(sys.prefix))]
    return args


def sandbox_command(
    harness_dir: Path, *, tmp_mb: int = 64, check: bool = False, dry_run: bool = False, fork_server: bool = False
) -> list[str]:
    """The bubblewrap command line that runs the sandbox child on ``harness_dir`` (``check``:
    import only; ``dry_run``: one run against canned replies, :func:`dry_run_harness`;
    ``fork_server``: the warm sandbox's server, :mod:`inner.sandbox.forkserver`, which keeps
    ``CAP_SYS_ADMIN`` and ``CAP_SETPCAP`` inside the sandbox's user namespace to give each
    document its own namespaces, and drops them in every document; it also sees the host's
    ``/proc`` at :data:`inner.sdk.forkserver.HOST_PROC`, which every document covers)."""
    caps = ["--cap-drop", "ALL"]
    if fork_server:
        caps += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"]
    cmd = [
        bwrap_path(),
        "--unshare-all", "--unshare-user", "--disable-userns", *caps,
        "--die-with-parent", "--new-session",
        # /tmp first: binds below it (a checkout or venv under /tmp) must stay visible on top
        "--size", str(tmp_mb << 20), "--tmpfs", "/tmp",
        *_system_binds(),
        "--ro-bind", str(sdk_dir()), "/sdk",
        "--ro-bind", str(Path(harness_dir).resolve()), "/harness",
        "--proc", "/proc",
        *(["--bind", "/proc", HOST_PROC] if fork_server else []),
        "--dev", "/dev", "--size", str(4 << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", "/tmp",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--",
        sys.executable, "-I",
    ]  # fmt: skip
    if fork_server:
        return [*cmd, "/sdk/inner/sdk/forkserver.py", "/harness"]
    cmd += ["/sdk/inner/sdk/child.py", "/harness"]
    if check:
        cmd.append("--check")
    elif dry_run:
        cmd.append("--dry-run")
    return cmd


#: limits of a sandbox built without them (tests, tools); a run always passes ``inner.harness_*``
DEFAULT_MEMORY_MB = 2048
DEFAULT_CPU_S = 120
DEFAULT_MAX_PROCS = 32
#: most bytes of a harness's stderr kept in its log
DEFAULT_LOG_BYTES = 1 << 20


class _Cgroups:
    """cgroup v1 ``pids`` and ``memory`` groups for one sandbox: its process count and its
    memory in total (all processes, tmpfs pages included). Best effort: used where the
    hierarchies are writable, as on these machines (RLIMIT_NPROC cannot limit root, and
    RLIMIT_AS is per process)."""

    def __init__(self, max_procs: int, memory_mb: int) -> None:
        _sweep_stale_cgroups()
        name = f"autodata/{uuid.uuid4().hex[:12]}"
        self.paths: list[Path] = []
        for root, limits in (
            (PIDS_CGROUP, {"pids.max": str(max_procs)}),
            (_own_memory_cgroup(), {"memory.limit_in_bytes": str(memory_mb << 20)}),
        ):
            if root is None:
                continue
            try:
                path = root / name
                path.mkdir(parents=True)
                for key, value in limits.items():
                    (path / key).write_text(value)
                self.paths.append(path)
            except OSError:
                continue

    def enter(self) -> None:
        """In the child between fork and exec: join the groups."""
        self.add(os.getpid())

    def add(self, pid: int) -> None:
        """Move process ``pid`` (this pid namespace) into the groups; its later children follow."""
        for path in self.paths:
            with contextlib.suppress(OSError):
                (path / "cgroup.procs").write_text(str(pid))

    def destroy(self) -> None:
        """Kill whatever is left in the groups and remove them."""
        import time

        for path in self.paths:
            for _ in range(100):
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                path.rmdir()
        self.paths = []


@functools.lru_cache(maxsize=1)
def _sweep_stale_cgroups() -> None:
    """Remove empty sandbox cgroups left by killed runs (once per process)."""
    for root in (PIDS_CGROUP, _own_memory_cgroup()):
        if root is None:
            continue
        for path in (root / "autodata").glob("*"):
            with contextlib.suppress(OSError):
                if not (path / "cgroup.procs").read_text().strip():
                    path.rmdir()


@functools.lru_cache(maxsize=1)
def _own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory (sandboxes nest under it), if any."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                path = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
                return path if path.is_dir() else None
    except OSError:
        return None
    return None


def _preexec(*, memory_mb: int, cpu_s: int, cgroup: _Cgroups) -> Any:
    def apply() -> None:  # in the child between fork and exec
        import ctypes
        import resource

        cgroup.enter()
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return apply


def server_preexec(memory_mb: int) -> Any:
    """The fork server's limits (:mod:`inner.sandbox.forkserver`), applied between fork and exec:
    its address space (``memory_mb``), open files, file size, death with the parent. No CPU limit:
    it lives for the whole run, and every document sets its own."""

    def apply() -> None:
        import ctypes
        import resource

        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return apply


async def drain_to_log(stream: asyncio.StreamReader, log_path: Path | None, log_bytes: int) -> None:
    """Read ``stream`` to its end, appending at most ``log_bytes`` of it to ``log_path``."""
    written = 0
    fh = log_path.open("ab") if log_path else None
    try:
        while chunk := await stream.read(65536):
            if fh is not None and written < log_bytes:
                fh.write(chunk[: log_bytes - written])
                fh.flush()
                written += len(chunk)
    finally:
        if fh is not None:
            fh.close()


async def read_message(stream: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next protocol message on a sandbox's stdout, or ``None`` at end of stream.

    Every string of the message is valid UTF-8 (:func:`inner.sdk.protocol.decode_line`).

    Raises:
        HarnessError: the child sent a line that is not a JSON object, is nested too deep or
            is too long (the message says which).
    """
    try:
        raw = await stream.readline()
    except (ValueError, asyncio.LimitOverrunError) as exc:
        raise HarnessError(f"the harness sent a protocol line over {MAX_LINE} bytes") from exc
    if not raw:
        return None
    try:
        return decode_line(raw)
    except ProtocolError as exc:
        raise HarnessError(f"the harness sent a {exc}") from exc


def describe_exit(code: int | None, *, bwrap: bool = True) -> str:
    """How a sandbox process ended, in words, from its ``returncode`` (``-N``: signal N; with
    ``bwrap``, also bubblewrap's ``128 + N``)."""
    if code is None:
        return "still running"
    signo = -code if code < 0 else code - 128 if bwrap and code > 128 else 0
    if signo in {s.value for s in signal.Signals}:
        name = signal.Signals(signo).name
        why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed)"}.get(name, "")
        return f"killed by {name}{why}"
    return f"exited with code {code}"


class SandboxProcess:
    """One sandboxed harness process (one document).

    Args:
        harness_dir: the harness directory (mounted read-only).
        memory_mb / cpu_s / max_procs: resource limits (``inner.harness_*``).
        log_path: file that receives the harness's stderr (appended, at most ``log_bytes``).

    Raises:
        SandboxError: bubblewrap is missing or unusable (from :meth:`start`).
    """

    def __init__(
        self,
        harness_dir: Path,
        *,
        memory_mb: int = DEFAULT_MEMORY_MB,
        cpu_s: int = DEFAULT_CPU_S,
        max_procs: int = DEFAULT_MAX_PROCS,
        log_path: Path | None = None,
        log_bytes: int = DEFAULT_LOG_BYTES,
    ) -> None:
        self.harness_dir = Path(harness_dir)
        self.memory_mb, self.cpu_s, self.max_procs = memory_mb, cpu_s, max_procs
        self.log_path, self.log_bytes = log_path, log_bytes
        self.proc: asyncio.subprocess.Process | None = None
        self._cgroup: _Cgroups | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self, *, check: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """Start the child and wait for its ``ready`` line (the harness imported).

        Returns:
            The ready message: ``{"ok": true}`` or ``{"ok": false, "error": ...}``.
        """
        cmd = sandbox_command(self.harness_dir, check=check, dry_run=dry_run)
        self._cgroup = _Cgroups(self.max_procs, self.memory_mb)
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=_preexec(memory_mb=self.memory_mb, cpu_s=self.cpu_s, cgroup=self._cgroup),
            start_new_session=True, limit=MAX_LINE, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )  # fmt: skip
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        line = await self.readline()
        if line is None:
            code = await self.proc.wait()
            return {"ok": False, "error": f"the sandbox exited with code {code} before the harness loaded"}
        if line.get("t") != "ready":
            return {"ok": False, "error": f"unexpected first message from the sandbox: {str(line)[:200]}"}
        return line

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        await drain_to_log(self.proc.stderr, self.log_path, self.log_bytes)

    async def readline(self) -> dict[str, Any] | None:
        """The next protocol message, or ``None`` at end of stream (:func:`read_message`).

        Raises:
            HarnessError: the child sent a line that is not a JSON object, is nested too deep or
                is too long (the message says which).
        """
        assert self.proc is not None and self.proc.stdout is not None
        return await read_message(self.proc.stdout)

    async def wait(self) -> int | None:
        """Wait until the sandbox has ended; its ``returncode``."""
        return await self.proc.wait() if self.proc is not None else None

    async def send(self, msg: dict[str, Any]) -> None:
        """Send one protocol message (ignored if the child is gone)."""
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            await self.proc.stdin.drain()

    def exit_description(self) -> str:
        """How the child ended, in words (for ``harness_error``)."""
        return describe_exit(self.proc.returncode if self.proc else None)

    async def kill(self) -> None:
        """Kill the whole sandbox (bubblewrap, its PID namespace, the cgroup) and reap it."""
        if self.proc is not None:
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
            # close the pipes now, not when the event loop is gone (no "Event loop is closed")
            transport = getattr(self.proc, "_transport", None)
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()
        if self._cgroup is not None:
            await asyncio.to_thread(self._cgroup.destroy)
            self._cgroup = None
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stderr_task, 2)


async def validate_harness(
    harness_dir: Path, *, timeout_s: float = 60.0, memory_mb: int = DEFAULT_MEMORY_MB
) -> str | None:
    """Check in the sandbox that ``harness_dir`` imports and defines ``async def run(agent)``.

    Returns:
        ``None`` if valid, else the reason (import error, missing ``run``, timeout, crash).

    Raises:
        SandboxError: bubblewrap is missing or unusable.
    """
    sb = SandboxProcess(harness_dir, memory_mb=memory_mb)
    try:
        ready = await asyncio.wait_for(sb.start(check=True), timeout_s)
    except TimeoutError:
        return f"importing the harness did not finish within {timeout_s:.0f} s"
    except HarnessError as exc:
        return str(exc)
    finally:
        await sb.kill()
    return None if ready.get("ok") else str(ready.get("error"))


#: LLM calls a harness may make in its dry run before the canned budget stops it
DRY_RUN_MAX_CALLS = 40


async def dry_run_harness(
    harness_dir: Path,
    *,
    timeout_s: float = 60.0,
    memory_mb: int = DEFAULT_MEMORY_MB,
    cpu_s: int = DEFAULT_CPU_S,
    roles: tuple[str, ...] | None = None,
    max_rounds: int = 2,
    max_calls: int = DRY_RUN_MAX_CALLS,
    domain: str = "research paper",
) -> str | None:
    """Run ``harness_dir`` once in the sandbox with no LLM and no evaluator (the child's
    ``--dry-run``, :func:`inner.sdk.child.dry_run`): every ``agent.llm`` gets a canned
    minimal instance of its JSON schema, every ``agent.evaluate`` a canned TOO_EASY report;
    a harness that returns, or stops on the canned call/round budget, passes.

    Args:
        timeout_s: wall-clock limit of the whole dry run, seconds (no LLM waits in it).
        roles: the roles the harness may call (default :data:`inner.config.HARNESS_ROLES`).
        max_rounds / max_calls: the canned budgets.

    Returns:
        ``None`` if the harness ran, else what went wrong: the import error, the harness's
        traceback, how the process ended, or the timeout.

    Raises:
        SandboxError: bubblewrap is missing or unusable.
    """
    if roles is None:
        from inner.config import HARNESS_ROLES

        roles = HARNESS_ROLES
    sb = SandboxProcess(harness_dir, memory_mb=memory_mb, cpu_s=cpu_s)

    async def go() -> str | None:
        ready = await sb.start(dry_run=True)
        if not ready.get("ok"):
            return str(ready.get("error"))
        await sb.send({"t": "dry_run", "roles": list(roles), "max_rounds": max_rounds, "max_calls": max_calls,
                       "domain": domain})  # fmt: skip
        msg = await sb.readline()
        if msg is None:
            if sb.proc is not None:
                await sb.proc.wait()
            return f"the harness process {sb.exit_description()} during the dry run (crash, sys.exit or os._exit)"
        if msg.get("t") != "done":
            return f"unexpected message from the dry run: {str(msg)[:200]}"
        return None if msg.get("ok") else f"the harness raised in the dry run:\n{msg.get('error', '')}"

    try:
        return await asyncio.wait_for(go(), timeout_s)
    except TimeoutError:
        return f"the dry run did not finish within {timeout_s:g} s (a loop that never ends, or a hang)"
    except HarnessError as exc:
        return str(exc)
    finally:
        await sb.kill()
