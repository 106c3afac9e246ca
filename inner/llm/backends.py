"""Backends: the LLM servers the project starts itself.

- ``local`` (default, offline): a llama.cpp server with the embedded Qwen2.5-Coder-0.5B-Instruct
  GGUF (:mod:`inner.llm.weights`) on a free loopback port, or one server per model of
  ``llm.backend.models`` (each endpoint goes to the server of its ``model``; :func:`local_models`
  resolves their settings). ``llm.backend.server`` picks it:
  upstream llama.cpp's ``llama-server`` (parallel slots, continuous batching, prompt-prefix
  cache; built from the llama-cpp-python sdist by :mod:`inner.llm.build_server`), or
  llama-cpp-python's ``llama_cpp.server`` (one request at a time), or ``auto``: llama-server
  if built, else llama-cpp-python's with a warning.
- ``vllm``: ``vllm serve MODEL`` on a free loopback port (GPU machines); waits for ``/health``.
  With ``llm.backend.replicas: N``, N such servers, each on its own port and its own
  ``gpus_per_replica`` GPUs (``CUDA_VISIBLE_DEVICES``), started together; the served
  endpoints get the N URLs as their replicas (:mod:`inner.llm.replicas`).
- ``openai``: starts nothing; endpoints must set ``base_url`` (and ``api_key_env``).

:func:`start_backend` is a context manager that yields ``{endpoint name: base_url}`` (a list
of URLs for vLLM replicas) for the endpoints with neither ``base_url`` nor ``base_urls``, and
stops the server(s) on exit, Ctrl-C or error: SIGTERM to its process group, SIGKILL after
:data:`STOP_GRACE_S` (1 s). The child gets ``PR_SET_PDEATHSIG`` (SIGKILL) on Linux, so it
dies at once when this process dies without running its cleanup (SIGTERM's default action,
SIGKILL), even in the middle of a generation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from inner.config import LLMConfig, LocalModelConfig
from inner.llm.build_server import built_server, installed_version
from inner.llm.weights import INSTALL_HINT, Weights, ensure_gguf, weights_by_id
from inner.sdk.errors import BackendError

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when stopping a server: llama-server exits within a
#: decode step on SIGTERM; llama-cpp-python's (uvicorn) would first finish its request, and a
#: server busy in a long step may not answer SIGTERM at all. Nothing is lost by the SIGKILL
#: (the run has stopped sending requests), and a run stopped by a signal must be gone within
#: 5 s (:data:`inner.entrypoint.STOP_GRACE_S`), so the grace is short.
STOP_GRACE_S = 1.0
#: Seconds to wait for the process after SIGKILL before giving up on reaping it (it is then
#: killed with this process at the latest: ``PR_SET_PDEATHSIG``).
KILL_WAIT_S = 2.0
#: ``--cache-reuse``: 0 = reuse only a cached prompt's common *prefix* (exact). Chunk reuse by
#: KV shifting scans the cache for the new prompt's tokens right after the common prefix, so it
#: cannot reuse an excerpt that follows a different system prompt (measured: 0 tokens reused,
#: experiments/bench/README.md), and shifted KV is only an approximation of a recompute.
CACHE_REUSE_TOKENS = 0
#: ``--cache-ram``: host-memory prompt cache of llama-server, MiB (its default is 8192).
CACHE_RAM_MIB = 1024
BUILD_HINT = "build it with: make install  (or: python -m inner.llm.build_server)"
#: ``--poll`` of servers that share the cores with another local server (``llm.backend.poll``
#: unset): 0 = worker threads sleep instead of spinning while they wait for work, so a server
#: that waits does not burn the core another server decodes on (experiments/bench/README.md,
#: "Two servers on 2 cores").
SHARED_POLL = 0
#: Seconds :func:`busy_cores` watches the cores before the local servers start, when their
#: threads are left to the backend (``llm.backend.n_threads`` unset).
BUSY_SAMPLE_S = 0.5


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity set; all CPUs where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_cores(sample_s: float = BUSY_SAMPLE_S) -> float:
    """How many of :func:`usable_cores` other processes keep busy: their busy share over
    ``sample_s`` seconds, from ``/proc/stat`` (per CPU: 1 - idle and iowait ticks / all ticks),
    summed, less this process's own CPU time meanwhile. ``0.0`` where ``/proc/stat`` is not
    readable (not Linux).

    Why: llama.cpp's threads wait for each other after every operation, so one thread that
    shares its core with a busy process stalls the whole server. On 2 cores with one held by a
    spinning process, ``make demo`` took 691 s with 2 threads and 125 s with 1 (58 s and 122 s
    idle; experiments/bench/README.md, "One server and a busy core")."""
    cpus = usable_cores()

    def ticks() -> dict[int, tuple[int, int]] | None:
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        out = {}
        for line in lines:
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                v = [int(x) for x in vals]
                out[int(name[3:])] = (v[3] + (v[4] if len(v) > 4 else 0), sum(v))
        return out

    before, own0 = ticks(), os.times()
    if not before:
        return 0.0
    time.sleep(sample_s)
    after, own1 = ticks(), os.times()
    busy = 0.0
    for cpu, (idle0, total0) in before.items():
        idle1, total1 = (after or {}).get(cpu, (idle0, total0))
        if total1 > total0:
            busy += 1.0 - (idle1 - idle0) / (total1 - total0)
    own = (own1.user - own0.user + own1.system - own0.system) / sample_s
    return max(0.0, busy - own)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_endpoints(cfg: LLMConfig) -> list[str]:
    return [name for name, ep in cfg.endpoints.items() if not ep.urls]


def _served_model(cfg: LLMConfig) -> str:
    names = {cfg.endpoints[n].model for n in _served_endpoints(cfg)}
    if len(names) > 1:
        raise BackendError(
            f"llm.backend.kind={cfg.backend.kind!r} serves one model, but the endpoints without base_url "
            f"name several: {sorted(names)}; give the others a base_url"
        )
    return names.pop() if names else "model"


@dataclass(frozen=True)
class LocalModel:
    """One server of the local backend, its settings resolved (:func:`local_models`).

    Attributes:
        key: its key in ``llm.backend.models`` (``None`` with ``models`` empty).
        name: served name (``--alias``): the ``model`` of the endpoints it serves.
        weights: its GGUF.
        slots: requests decoded at once; n_ctx: tokens per request.
        n_threads / n_threads_batch: generation / prompt-processing threads.
        poll: ``--poll`` (0-100), or ``None`` for llama.cpp's default.
        endpoints: the endpoints (without ``base_url``) it serves.
    """

    key: str | None
    name: str
    weights: Weights
    slots: int
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    poll: int | None
    endpoints: tuple[str, ...]


def local_models(cfg: LLMConfig, *, free_cores: int | None = None) -> list[LocalModel]:
    """The servers ``llm=local`` starts for the endpoints without ``base_url``: one per model of
    ``llm.backend.models`` whose served name some such endpoint names (in the order of
    ``models``), or, with
    ``models`` empty, one for the endpoints' one model with ``llm.backend.weights``. A setting a
    model leaves ``None`` is the backend's; threads left ``None`` everywhere are ``free_cores``
    (default: every usable core; :func:`_start_local` passes the cores not busy with other
    processes, :func:`busy_cores`) divided evenly among the servers (at least 1), and ``poll``
    is :data:`SHARED_POLL` when there are several servers (llama.cpp's default for one).

    Raises:
        BackendError: ``models`` is empty but the endpoints name several models.
    """
    b = cfg.backend
    served = _served_endpoints(cfg)
    wanted = {cfg.endpoints[e].model for e in served}
    specs: list[tuple[str | None, str, LocalModelConfig]]
    if b.models:
        specs = [(key, b.served_name(m), m) for key, m in b.models.items()]
        specs = [s for s in specs if s[1] in wanted]
    else:
        if len(wanted) > 1:
            raise BackendError(
                f"llm.backend.models is empty, so llm=local starts one server, but the endpoints without "
                f"base_url name several models: {sorted(wanted)}; list them in llm.backend.models "
                "(one server each) or give the others a base_url"
            )
        specs = [(None, name, LocalModelConfig()) for name in wanted]
    cores = free_cores if free_cores is not None else len(usable_cores())
    threads = b.n_threads or max(1, cores // max(1, len(specs)))
    poll = b.poll if b.poll is not None else (SHARED_POLL if len(specs) > 1 else None)
    out = []
    for key, name, m in specs:
        n_threads = m.n_threads or threads
        out.append(
            LocalModel(
                key=key,
                name=name,
                weights=weights_by_id(m.weights or b.weights),
                slots=m.slots or b.slots,
                n_ctx=m.n_ctx or b.n_ctx,
                n_threads=n_threads,
                n_threads_batch=m.n_threads_batch or b.n_threads_batch or n_threads,
                poll=m.poll if m.poll is not None else poll,
                endpoints=tuple(e for e in served if cfg.endpoints[e].model == name),
            )
        )
    return out


def _only_model(cfg: LLMConfig, model: LocalModel | None) -> LocalModel:
    if model is not None:
        return model
    models = local_models(cfg)
    if len(models) != 1:
        raise BackendError(f"the local backend starts {len(models)} servers here: name the model")
    return models[0]


def llama_cpp_command(cfg: LLMConfig, model_path: Path, port: int, model: LocalModel | None = None) -> list[str]:
    """Command line of the embedded llama.cpp server (llama-cpp-python ``llama_cpp.server``)
    for ``model`` (default: the backend's only model). It has no ``--parallel`` nor ``--poll``."""
    m = _only_model(cfg, model)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", m.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(m.n_ctx),
        "--n_threads", str(m.n_threads),
        "--n_threads_batch", str(m.n_threads_batch),
    ]  # fmt: skip
    return cmd + list(cfg.backend.extra_args)


def llama_server_command(
    cfg: LLMConfig, binary: Path, model_path: Path, port: int, model: LocalModel | None = None
) -> list[str]:
    """Command line of upstream llama.cpp's ``llama-server`` (flags of the llama.cpp vendored in
    llama-cpp-python 0.3.36) for ``model`` (default: the backend's only model).

    ``slots`` parallel slots with continuous batching, ``n_ctx`` tokens per slot
    (``--ctx-size`` is the total, split evenly: the KV cache is not unified when ``--parallel``
    is given), ``--threads`` / ``--threads-batch`` and ``--poll`` / ``--poll-batch`` (when set) as
    :func:`local_models` resolves them, prompt caching (on by default: a request goes to the
    idle slot whose cached prompt shares the longest prefix with it, above 10 % of its length,
    or else the ``--cache-ram`` host cache is searched) with :data:`CACHE_REUSE_TOKENS` and
    :data:`CACHE_RAM_MIB`, no web UI. ``extra_args`` come last, so they override (llama.cpp
    keeps the last value of a repeated flag).
    """
    m = _only_model(cfg, model)
    cmd = [
        str(binary),
        "--model", str(model_path),
        "--alias", m.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--ctx-size", str(m.n_ctx * m.slots),
        "--parallel", str(m.slots),
        "--threads", str(m.n_threads),
        "--threads-batch", str(m.n_threads_batch),
        # --poll-batch too: with --threads-batch given, the batch threads keep their own
        # default polling (50) whatever --poll says (common/common.cpp, postprocess_cpu_params)
        *(["--poll", str(m.poll), "--poll-batch", str(m.poll)] if m.poll is not None else []),
        "--cont-batching",
        "--cache-reuse", str(CACHE_REUSE_TOKENS),
        "--cache-ram", str(CACHE_RAM_MIB),
        "--no-webui",
    ]  # fmt: skip
    return cmd + list(cfg.backend.extra_args)


def local_server(cfg: LLMConfig) -> tuple[str, Path | None]:
    """Which embedded server ``llm.backend.server`` resolves to: ``("llama-server", binary)``
    or ``("llama-cpp-python", None)``.

    Raises:
        BackendError: ``server=llama-server`` but it is not built for the installed
            llama-cpp-python version (the message says how to build it).
    """
    choice = cfg.backend.server
    if choice == "llama-cpp-python":
        return choice, None
    binary = built_server()
    if binary is not None:
        return "llama-server", binary
    try:
        missing = f"llama-server is not built for llama-cpp-python {installed_version()}"
    except BackendError as exc:
        missing = str(exc)
    if choice == "llama-server":
        raise BackendError(
            f"llm.backend.server=llama-server, but {missing}: {BUILD_HINT}; "
            "or set llm.backend.server=llama-cpp-python (one request at a time)"
        )
    log.warning(
        "%s; falling back to llama-cpp-python's server, which answers one request at a time "
        "(about 1.5-2x slower with several in flight, see experiments/bench/README.md): %s",
        missing, BUILD_HINT,
    )  # fmt: skip
    return "llama-cpp-python", None


def vllm_command(cfg: LLMConfig, port: int) -> list[str]:
    """Command line of ``vllm serve`` for ``llm=vllm`` (one replica); the served name is the
    endpoint's model; ``--tensor-parallel-size`` when ``llm.backend.gpus_per_replica`` is
    above 1. ``extra_args`` come last, so they override."""
    served = _served_model(cfg)
    model = cfg.backend.vllm_model or served
    cmd = [
        "vllm",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        served,
    ]
    if cfg.backend.gpus_per_replica > 1:
        cmd += ["--tensor-parallel-size", str(cfg.backend.gpus_per_replica)]
    return cmd + list(cfg.backend.extra_args)


def vllm_replica_devices(cfg: LLMConfig, index: int, visible: str | None) -> str:
    """``CUDA_VISIBLE_DEVICES`` of vLLM replica ``index``: ``llm.backend.gpus_per_replica``
    consecutive devices, counted within ``visible`` (the parent's ``CUDA_VISIBLE_DEVICES``)
    when it is set, else GPUs ``0..``; e.g. 2 per replica: replica 1 gets ``"2,3"``.

    Raises:
        BackendError: ``visible`` lists fewer devices than ``replicas x gpus_per_replica``.
    """
    b = cfg.backend
    need = b.replicas * b.gpus_per_replica
    if visible is not None and visible.strip():
        devices = [d.strip() for d in visible.split(",") if d.strip()]
        if len(devices) < need:
            raise BackendError(
                f"llm.backend.replicas={b.replicas} x llm.backend.gpus_per_replica={b.gpus_per_replica} needs {need} "
                f"GPUs, but CUDA_VISIBLE_DEVICES={visible!r} lists {len(devices)}: lower one of them"
            )
    else:
        devices = [str(i) for i in range(need)]
    return ",".join(devices[index * b.gpus_per_replica : (index + 1) * b.gpus_per_replica])


def vllm_ports(cfg: LLMConfig) -> list[int]:
    """The ports of the vLLM replicas: ``port, port + 1, ...`` when ``llm.backend.port`` is
    set, else distinct free loopback ports."""
    if cfg.backend.port:
        return [cfg.backend.port + i for i in range(cfg.backend.replicas)]
    ports: list[int] = []
    while len(ports) < cfg.backend.replicas:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def vllm_servers(cfg: LLMConfig, *, log_dir: Path) -> list[ManagedServer]:
    """One :class:`ManagedServer` per replica (not started): :func:`vllm_command` on its port
    (:func:`vllm_ports`), health at ``/health``, log ``llm_server.log`` (one replica) or
    ``llm_server-<i>.log``. With several replicas each gets its own devices
    (:func:`vllm_replica_devices`); one replica sees the parent's.

    Raises:
        BackendError: too few visible GPUs for the replicas.
    """
    n = cfg.backend.replicas
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [
        ManagedServer(
            vllm_command(cfg, port),
            health_url=f"http://127.0.0.1:{port}/health",
            log_path=log_dir / ("llm_server.log" if n == 1 else f"llm_server-{i}.log"),
            startup_timeout_s=cfg.backend.startup_timeout_s,
            env={"CUDA_VISIBLE_DEVICES": vllm_replica_devices(cfg, i, visible)} if n > 1 else None,
        )
        for i, port in enumerate(vllm_ports(cfg))
    ]


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    import ctypes

    # SIGKILL, not SIGTERM: a server that gets SIGTERM may first finish the request in hand
    # (llama-cpp-python's uvicorn did, for 15 s and more).
    with contextlib.suppress(OSError):  # not glibc: the server is still stopped on normal exit
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class ManagedServer:
    """A child server process with a health check.

    Args:
        cmd: command line.
        health_url: URL that answers 200 once the server is ready.
        log_path: file that receives the server's stdout and stderr.
        startup_timeout_s: seconds to wait for health before giving up.
        env: variables set for the server on top of this process's environment.
    """

    def __init__(
        self,
        cmd: list[str],
        *,
        health_url: str,
        log_path: Path,
        startup_timeout_s: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cmd = cmd
        self.health_url = health_url
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._deadline = 0.0

    def start(self) -> None:
        """Start the process and block until healthy (:meth:`launch`, :meth:`wait_ready`).

        Raises:
            BackendError: the process exits early or is not healthy within the timeout
                (the message quotes the end of its log).
        """
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting; the startup timeout counts from now.

        Raises:
            BackendError: the command cannot be run.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("ab")
        log.info("starting LLM server: %s", " ".join(self.cmd))
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                env={**os.environ, **self.env} if self.env else None,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )
        except FileNotFoundError as exc:
            raise BackendError(f"cannot start {self.cmd[0]!r}: {exc}") from exc
        finally:
            logf.close()
        self._deadline = time.monotonic() + self.startup_timeout_s

    def wait_ready(self) -> None:
        """Block until the launched process is healthy.

        Raises:
            BackendError: the process exits early or is not healthy within the timeout
                (the message quotes the end of its log).
        """
        while not self.ready():
            time.sleep(0.5)

    def ready(self) -> bool:
        """Whether the launched process is healthy now (one health check).

        Raises:
            BackendError: the process has exited, or its startup timeout has passed (it is
                then stopped); the message quotes the end of its log.
        """
        assert self.proc is not None, "launch() first"
        if self.proc.poll() is not None:
            raise BackendError(
                f"LLM server exited with code {self.proc.returncode} during startup; "
                f"log {self.log_path}:\n{self._tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):  # not listening yet
            if httpx.get(self.health_url, timeout=2.0).status_code == 200:
                return True
        if time.monotonic() >= self._deadline:
            self.stop()
            raise BackendError(
                f"LLM server not healthy at {self.health_url} after {self.startup_timeout_s:.0f} s "
                f"(llm.backend.startup_timeout_s); log {self.log_path}:\n{self._tail()}"
            )
        return False

    def _tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the process group, then SIGKILL it after ``grace_s`` seconds; returns once
        the process is gone, or :data:`KILL_WAIT_S` after the SIGKILL at most, whatever the
        server is doing."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("LLM server still running %.0f s after SIGTERM: SIGKILL", grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("LLM server (pid %d) not reaped %.0f s after SIGKILL", self.proc.pid, KILL_WAIT_S)
                return
        log.info("LLM server stopped")


@contextlib.contextmanager
def start_backend(cfg: LLMConfig, *, log_dir: Path) -> Iterator[dict[str, str | list[str]]]:
    """Start the configured backend and yield base URLs for the endpoints it serves.

    Args:
        cfg: the LLM config (``cfg.backend.kind`` picks the backend).
        log_dir: where ``llm_server.log`` goes (``llm_server.<model>.log``, one per server,
            when the local backend starts several).

    Yields:
        ``{endpoint name: base_url}`` for every endpoint with neither ``base_url`` nor
        ``base_urls`` (empty for ``openai``, or when every endpoint already has a URL); for
        ``llm=vllm`` with ``replicas`` above 1, ``{endpoint name: [replica URLs]}``.

    Raises:
        BackendError / ModelWeightsError: the extra is not installed, weights are missing or
            corrupt, ``server=llama-server`` is not built, or the server does not come up.
    """
    served = _served_endpoints(cfg)
    kind = cfg.backend.kind
    if kind == "openai" or not served:
        yield {}
        return
    if kind == "vllm":
        with start_vllm(cfg, log_dir=log_dir) as urls:
            yield {name: urls[0] if len(urls) == 1 else urls for name in served}
        return
    with _start_local(cfg, log_dir=log_dir) as local_urls:
        yield dict(local_urls)


@contextlib.contextmanager
def start_vllm(cfg: LLMConfig, *, log_dir: Path) -> Iterator[list[str]]:
    """Start ``llm.backend.replicas`` vLLM servers together (:func:`vllm_servers`), wait until
    all are healthy, yield their base URLs (``http://127.0.0.1:<port>/v1``, replica order), and
    stop them all on exit.

    Raises:
        BackendError: ``vllm`` is not installed, too few visible GPUs, or a replica does not
            come up (the others are stopped).
    """
    if shutil.which("vllm") is None:
        raise BackendError("llm=vllm needs the `vllm` command: pip install vllm (GPU machine)")
    servers = vllm_servers(cfg, log_dir=log_dir)
    try:
        for server in servers:  # all load their weights at once: minutes each
            server.launch()
        waiting = list(servers)
        while waiting:  # the first replica that fails stops them all, without waiting for the rest
            waiting = [server for server in waiting if not server.ready()]
            if waiting:
                time.sleep(0.5)
        yield [server.health_url.removesuffix("/health") + "/v1" for server in servers]
    finally:
        for server in servers:
            server.stop()


def _log_name(models: list[LocalModel], model: LocalModel) -> str:
    """``llm_server.log`` for one server; ``llm_server.<key>.log`` for several."""
    if len(models) == 1:
        return "llm_server.log"
    return f"llm_server.{re.sub(r'[^A-Za-z0-9._-]', '_', model.key or model.name)}.log"


@contextlib.contextmanager
def _start_local(cfg: LLMConfig, *, log_dir: Path) -> Iterator[dict[str, str]]:
    """Start one local server per :func:`local_models` entry (all spawned, then each waited
    for), yield ``{endpoint: its model's base_url}``, stop them all on exit. With
    ``llm.backend.port`` set, server ``i`` listens on ``port + i``."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendError(f"llm=local needs llama-cpp-python[server]: {INSTALL_HINT}")
    which, binary = local_server(cfg)
    free = None
    b = cfg.backend
    if b.n_threads is None and (not b.models or any(m.n_threads is None for m in b.models.values())):
        cores, busy = len(usable_cores()), busy_cores()
        free = max(1, cores - round(busy))
        if free < cores:
            log.info(
                "%.1f of %d cores busy with other processes: the local servers get %d thread(s) in all "
                "(llm.backend.n_threads sets them)", busy, cores, free,
            )  # fmt: skip
    models = local_models(cfg, free_cores=free)
    cache = Path(cfg.backend.model_cache_dir) if cfg.backend.model_cache_dir else None
    paths = [ensure_gguf(cache, m.weights) for m in models]
    servers: list[ManagedServer] = []
    urls: dict[str, str] = {}
    ports: set[int] = set()
    for i, (m, path) in enumerate(zip(models, paths, strict=True)):
        port = cfg.backend.port + i if cfg.backend.port else free_port()
        while port in ports:  # two free ports asked in a row may coincide
            port = free_port()
        ports.add(port)
        base = f"http://127.0.0.1:{port}"
        if binary is not None:
            cmd = llama_server_command(cfg, binary, path, port, m)
            health = f"{base}/health"  # 503 while the model loads, 200 when ready
        else:
            cmd = llama_cpp_command(cfg, path, port, m)
            health = f"{base}/v1/models"
        for name in m.endpoints:
            urls[name] = f"{base}/v1"
            if cfg.endpoints[name].max_in_flight != m.slots and which == "llama-server":
                log.warning(
                    "llm.endpoints.%s.max_in_flight=%d but the slots of its model %s are %d: requests "
                    "beyond the slots wait in the server's queue, and slots beyond max_in_flight stay idle",
                    name, cfg.endpoints[name].max_in_flight, m.name, m.slots,
                )  # fmt: skip
        servers.append(
            ManagedServer(
                cmd,
                health_url=health,
                log_path=log_dir / _log_name(models, m),
                startup_timeout_s=cfg.backend.startup_timeout_s,
            )
        )
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
        yield urls
    finally:
        for server in servers:
            server.stop()
