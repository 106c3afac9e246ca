"""What every console script shares: quiet library loggers, typed config conversion with
unknown keys refused, an event-loop runner that SIGINT and SIGTERM stop promptly, and one
place that turns an :class:`~inner.sdk.errors.AutodataError` or a signal into an honest exit code.

Exit codes (README, "Exit codes")::

    0    the run finished: every document finished (generate), or a budget stopped it (evolve)
    1    a config or usage error (bad or unknown key, missing corpus, unreachable endpoint, a
         harness that does not import, a torn state file, too low an open-file limit, ...), or
         any other AutodataError; nothing was generated, or the message says what was. Also a
         full, read-only or unwritable run directory (``inner.io.StorageError``): one message
         naming the file, and everything finished before is intact on disk
    3    generate: some documents ended in error (status ``error``); rerun the same command
         to redo exactly those
    4    evolve: a circuit breaker stopped the run (``stop_reason`` in summary.json)
    130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM. Finished work is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from inner.sdk.errors import AutodataError, ConfigError

log = logging.getLogger("autodata")
T = TypeVar("T")

#: Libraries that log one INFO line per HTTP request or per plot call.
NOISY_LOGGERS = ("httpx", "httpx2", "aiohttp", "matplotlib")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DOCUMENTS_IN_ERROR = 3
EXIT_CIRCUIT_BREAKER = 4
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143

#: Seconds between the first SIGINT/SIGTERM and a hard exit if the run has not stopped by
#: then (a cancellation must unwind through awaits; code that never awaits cannot be
#: cancelled). With the time to notice the signal, the process is gone within 5 s.
STOP_GRACE_S = 4.0


#: File descriptors one document in flight holds in this process: its sandbox's three pipes and
#: its ``sandbox.log`` handle (4, measured), doubled for the pipes of a sandbox being spawned.
FDS_PER_DOCUMENT = 8
#: File descriptors of the process itself (Python, logs, the response cache, ``calls.jsonl``, a
#: server's log, the event loop).
FDS_BASE = 64


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (``ulimit -n`` is often 1024 while
    the hard limit is far higher); children (an LLM server) inherit it, sandboxes set their own.

    Returns:
        ``(soft, hard)`` after the change (unchanged where it cannot be raised).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20):  # RLIM_INFINITY may be above the kernel's nr_open
        if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY and target <= soft):
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        soft = target
        break
    return soft, hard


def check_open_files(*, documents: int, connections: int, what: str) -> None:
    """Refuse up front a concurrency the open-file limit cannot hold, rather than let documents
    die of "Too many open files" one by one: raises the soft limit first
    (:func:`raise_open_files_limit`), then estimates :data:`FDS_BASE` + :data:`FDS_PER_DOCUMENT`
    per document in flight + one per LLM connection.

    Args:
        documents: documents in flight at once, at most.
        connections: LLM connections at once, at most (the endpoints' ``max_in_flight``).
        what: the settings behind ``documents``, for the message
            (``inner.max_concurrent_documents=256``).

    Raises:
        ConfigError: the estimate exceeds the limit; the message names
            ``inner.max_concurrent_documents``, the value that fits, and ``ulimit -n``.
    """
    import resource

    soft, hard = raise_open_files_limit()
    need = FDS_BASE + FDS_PER_DOCUMENT * documents + connections
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    fit = max(0, (soft - FDS_BASE - connections) // FDS_PER_DOCUMENT)
    hard_s = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    raise ConfigError(
        f"{what} keeps up to {documents} documents in flight, which needs about {need} open files "
        f"({FDS_PER_DOCUMENT} per document + {connections} LLM connections + {FDS_BASE}), but this process may "
        f"open {soft} (ulimit -n; hard limit {hard_s}). Lower inner.max_concurrent_documents (about {fit} documents "
        f"fit), or raise the limit (ulimit -n {need}, or the hard limit in /etc/security/limits.conf or the "
        "container's --ulimit nofile)"
    )


def unknown_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys of the composed config that its schema does not have.

    Hydra's ``+key=value`` adds a key even to a structured (dataclass-typed) node, and
    ``OmegaConf.to_object`` then sets it as a stray attribute, so a typo would be silently
    ignored. This walks every node whose type is a dataclass and compares its keys with the
    dataclass fields (dict-typed nodes such as ``llm.endpoints`` have free keys; their values
    are checked against their own dataclass).

    Returns:
        ``[(full key, valid keys at that level), ...]`` in config order.
    """
    out: list[tuple[str, list[str]]] = []
    typ = OmegaConf.get_type(node)
    names = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else None
    for key in node.keys():
        full = f"{prefix}{key}"
        if names is not None and key not in names:
            out.append((full, names))
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            out.extend(unknown_keys(child, f"{full}."))
        elif isinstance(child, ListConfig) and not child._is_none() and not child._is_missing():
            for i, item in enumerate(child._iter_ex(resolve=False)):
                if isinstance(item, DictConfig):
                    out.extend(unknown_keys(item, f"{full}[{i}]."))
    return out


def check_known_keys(dcfg: DictConfig) -> None:
    """Refuse a composed config with keys its schema does not define.

    Raises:
        ConfigError: names each unknown key and the closest valid one (``difflib``), or the
            valid keys at that level when none is close.
    """
    bad = unknown_keys(dcfg)
    if not bad:
        return
    parts = []
    for full, names in bad:
        parent, _, leaf = full.rpartition(".")
        where = f"{parent}." if parent else ""
        close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {where}{close[0]}?"
        else:
            nearest = difflib.get_close_matches(leaf, names, n=1, cutoff=0.0)
            hint = f"closest: {where}{nearest[0]}; " if nearest else ""
            hint += f"valid keys{' under ' + parent if parent else ''}: {', '.join(names)}"
        parts.append(f"{full} is not a config key ({hint})")
    raise ConfigError("; ".join(parts) + ". Remove the key or fix its spelling.")


def to_config(dcfg: DictConfig, cls: type[T]) -> T:
    """Convert the composed Hydra config to the dataclass ``cls`` once, at the entry point.

    Raises:
        ConfigError: an unknown key (see :func:`check_known_keys`), or a value that fails
            validation (the message names the key).
    """
    check_known_keys(dcfg)
    obj = OmegaConf.to_object(dcfg)
    assert isinstance(obj, cls), type(obj)
    return obj


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal. ``exit_code`` is ``128 + signum`` (130 for SIGINT,
    143 for SIGTERM)."""

    def __init__(self, signum: int, *, prompt: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        #: raised by :func:`run_async` after its cleanup: :func:`cli_guard` exits at once,
        #: without waiting for threads the run left behind (their work is abandoned)
        self.prompt = prompt

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _hard_exit(code: int, why: str) -> None:
    """Leave now: kill our direct child processes and the process groups they lead (so no
    server outlives us, even one that traps SIGTERM), then ``os._exit``. Records are
    append-only or atomic, so nothing finished is lost."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"autodata: {why}; exiting now (exit code {code})\n")
        sys.stderr.flush()
    for pid in _child_pids():
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # a server or sandbox in its own session
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
    os._exit(code)


def _exit_now(code: int) -> None:
    """``sys.exit`` without the interpreter's shutdown: logs and standard streams are flushed,
    but threads the interrupted run left (an executor thread removing a sandbox's cgroup, a
    probe) are not waited for, so a stop by signal is not held up by them."""
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _child_pids() -> list[int]:
    """Direct children of this process (Linux ``/proc``; empty elsewhere)."""
    me, out = os.getpid(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(entry.name))
    return out


def run_async(main: Coroutine[Any, Any, T], *, grace_s: float = STOP_GRACE_S) -> T:
    """Run ``main`` to completion on a new event loop, like ``asyncio.run``, but stoppable.

    The first SIGINT or SIGTERM cancels ``main`` (its ``finally`` blocks run: records are
    flushed, servers stopped) and arms a watchdog: if the process is still running
    ``grace_s`` seconds later (code that does not await cannot be cancelled), it terminates
    its child processes and exits with ``128 + signum``. A second signal exits at once.
    Threads of the default executor are not waited for (:func:`cli_guard` exits without the
    interpreter's shutdown, which would join them).

    Raises:
        Interrupted: a signal stopped the run (``exit_code`` 130 or 143).
        Whatever ``main`` raises.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(main)
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if received:
            _hard_exit(128 + received[0], f"second signal ({signal.Signals(signum).name})")
        received.append(signum)
        timer = threading.Timer(
            grace_s,
            _hard_exit,
            args=(128 + signum, f"the run did not stop within {grace_s:g} s of {signal.Signals(signum).name}"),
        )
        timer.daemon = True
        timer.start()
        loop.call_soon_threadsafe(task.cancel)

    main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(task)
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0], prompt=True) from None
        raise
    finally:
        # the watchdog stays armed until the process exits: cleanup after this may hang too
        try:
            _cancel_pending(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            if received:
                # let the exits of killed child processes reach their transports, and drop
                # those transports, while the loop is open (else each complains at exit)
                loop.run_until_complete(asyncio.sleep(0.2))
                gc.collect()
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
    if received:  # main returned although it was cancelled: the run is still incomplete
        raise Interrupted(received[0], prompt=True)
    return result


def _cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks ``main`` left behind and let them unwind (as ``asyncio.run`` does)."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def check_run_dir_writable(argv: list[str] | None = None) -> None:
    """Before Hydra starts (it writes ``.hydra/`` and its log file into the run directory and
    would fail there with a traceback): create the run directory of ``hydra.run.dir=DIR`` and
    write and fsync a 4 KiB probe file in it (without ``hydra.run.dir``, in the nearest existing
    directory of ``runs/``). A full, read-only or unwritable directory exits 1 with one message
    (:func:`inner.io.environment_error`). Skipped for a flag (``--help``, ``-m``, ...) or an
    interpolated directory.
    """
    from inner.io import environment_error

    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") for a in argv):
        return
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if given and "$" in given[-1]:
        return
    target = Path(given[-1]) if given else Path("runs")
    try:
        if given:
            target.mkdir(parents=True, exist_ok=True)
        else:
            while not target.is_dir():
                target = target.parent
        fd, probe = tempfile.mkstemp(dir=target, prefix=".autodata-probe.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        err = environment_error(exc, target)
        if err is None:
            return  # Hydra reports it
        sys.stderr.write(f"autodata: error: {err}\n")
        sys.exit(EXIT_ERROR)


def _raise_sigterm(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def cli_guard(on_interrupt: str = "") -> Iterator[None]:
    """Quiet noisy loggers; raise the soft open-file limit to the hard one
    (:func:`raise_open_files_limit`); exit 1 with the message (no traceback) on an AutodataError, and
    130 on SIGINT or 143 on SIGTERM with ``on_interrupt`` (e.g. where the finished work is)
    in the warning. SIGTERM outside :func:`run_async` (while loading documents, say) stops
    the process the same way Ctrl-C does."""
    from inner.io import environment_error

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # a full disk under the log file must not print a traceback per log line: the run's own
    # writes report it once (StorageError)
    logging.raiseExceptions = False
    raise_open_files_limit()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_sigterm) if main_thread else None
    try:
        yield
    except AutodataError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_ERROR)
    except OSError as exc:  # the disk or the open-file limit, met outside the run's record writes
        err = environment_error(exc)
        if err is None:
            raise
        log.error("%s", err)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else EXIT_SIGINT
        name = signal.Signals(code - 128).name
        log.warning("interrupted by %s%s", name, f": {on_interrupt}" if on_interrupt else "")
        if isinstance(exc, Interrupted) and exc.prompt:
            _exit_now(code)
        sys.exit(code)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
