"""The sandbox's fork server (runs *inside* bubblewrap, never in the parent): one warm Python per
(harness, run) that forks a pristine, sealed process per document.

Started by :class:`inner.sandbox.forkserver.ForkServer` as
``python -I /sdk/inner/sdk/forkserver.py /harness`` in the same bubblewrap sandbox as a fresh
document (same read-only mounts, cleared environment, empty network, rlimits), with two
capabilities kept inside the sandbox's own user namespace, ``CAP_SYS_ADMIN`` and
``CAP_SETPCAP``, so that it can give every document its own namespaces. Its standard input is a
``SOCK_SEQPACKET`` control socket to the parent.

The server imports the standard library, pydantic and the harness SDK (:mod:`inner.sdk.child`)
once; it never imports the harness: no harness code ever runs in it, so no import-time side
effect of a harness (a thread, an ``os.register_at_fork`` hook, a patched module) can be shared
by two documents. Each document then costs three forks instead of a new interpreter::

    server --fork--> A: unshare(pid, mount, net, ipc, uts namespaces), fork B, exit
                     B: pid 1 of the document's own pid namespace: private /tmp, /dev/shm and
                        /proc mounts (the host's /proc, which the server needs to mount a proc,
                        covered: :data:`HOST_PROC`); drops every capability; says hello to the parent (which reads B's host pid from the
                        socket's credentials and moves it into the document's cgroups); waits for
                        "go"; forks C; reaps; reports C's wait status; exits (the namespace dies)
                     C: the document: its stdin/stdout/stderr are the parent's pipes; rlimits
                        (RLIMIT_AS, RLIMIT_CPU, RLIMIT_NOFILE, RLIMIT_FSIZE); no capability (its
                        pid 1 emptied the bounding, ambient, effective and permitted sets and
                        set no_new_privs; checked again here); then
                        :func:`inner.sdk.child.main`: import the harness, ``ready``, one document

A document therefore sees only its own processes, its own ``/tmp`` and ``/dev/shm``, its own
(empty) network and IPC namespaces: it cannot signal, trace or talk to the server, to another
document or to a process another document started, and nothing it writes outlives it.

Control messages (parent -> server): one datagram ``{"t": "fork", "memory_mb", "cpu_s",
"tmp_mb"}`` carrying four file descriptors (the document's stdin read end, stdout and stderr
write ends, and its own ``SOCK_SEQPACKET`` control socket). On that socket B sends ``hello``,
the parent answers ``go`` (or closes it: B exits), and B sends ``exit <wait status>`` when C
ends. The server answers its own start-up with ``ready`` on its control socket, once a probe fork has built a
document's namespaces and mounts (``failed`` if it could not); an empty read (the parent closed
it) stops it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import traceback

if __name__ == "__main__":  # inside the sandbox: the SDK directory is the import root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 24, 28
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 36, 47, 4
#: SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | ..._LOCKED | SECBIT_KEEP_CAPS_LOCKED
SECURE_BITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
MS_RDONLY, MS_BIND, MS_REMOUNT = 0x1, 0x1000, 0x20
#: /dev/shm of a document, MiB (as bubblewrap's ``--size 4M --tmpfs /dev/shm`` of a fresh sandbox)
SHM_MB = 4
#: where the server sees the host's /proc (bound by bubblewrap): the kernel lets a user namespace
#: mount a new proc only where one is fully visible, and bubblewrap's own /proc is not (it covers
#: /proc/irq and /proc/bus). Each document covers it with an empty read-only tmpfs.
HOST_PROC = "/run/autodata-proc"
#: parts of a document's /proc made read-only (as bubblewrap does for a fresh sandbox, and /proc/sys)
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                    data.encode() if data else None),
        f"mount {target}",
    )  # fmt: skip


def _prctl(option: int, arg: int = 0) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def drop_capabilities() -> None:
    """Drop every capability of this process for good: ``no_new_privs``, the bounding set, the
    ambient set, root's special cases (securebits, locked), then effective/permitted/inheritable.

    Raises:
        OSError: a step failed (the document must not run then).
    """
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() != 22:  # EINVAL: past CAP_LAST_CAP
            _check(-1, f"PR_CAPBSET_DROP {cap}")
    _check(_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "PR_CAP_AMBIENT_CLEAR_ALL")
    _check(_prctl(PR_SET_SECUREBITS, SECURE_BITS), "PR_SET_SECUREBITS")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    _check(_libc.capset(header, data), "capset")
    check_no_capabilities()


def check_no_capabilities() -> None:
    """Raise :class:`OSError` unless every capability set of this process is empty and
    ``no_new_privs`` is set (a document's process, which inherits both from its pid 1)."""
    status = open("/proc/self/status").read()  # noqa: SIM115 - read once
    if "\nNoNewPrivs:\t1" not in status:
        raise OSError("no_new_privs is not set")
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        line = next(x for x in status.splitlines() if x.startswith(key + ":"))
        if int(line.split()[1], 16) != 0:
            raise OSError(f"capabilities left after dropping them: {line}")


def _close_all_but(keep: set[int]) -> None:
    lo = 0
    for fd in sorted(keep):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _document_init(harness: str, spec: dict[str, int], fds: list[int]) -> None:
    """B: pid 1 of the document's namespaces (see the module docstring); never returns."""
    stdin_r, stdout_w, stderr_w, ctl_fd = fds
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pid 1: no signal from the document reaches it
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the server
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(spec['tmp_mb'])}m,mode=0755")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={SHM_MB}m")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in PROC_READ_ONLY:
        path = f"/proc/{name}"
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", HOST_PROC, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    os.chdir("/tmp")
    # mounted: no process of the document's namespaces holds a capability from here on (this one
    # stays an ordinary process, like bubblewrap's pid 1 in a fresh sandbox)
    drop_capabilities()
    ctl = socket.socket(fileno=ctl_fd)
    ctl.send(b"hello")  # the kernel attaches this process's credentials: the parent learns its pid
    if ctl.recv(16) != b"go":
        os._exit(0)  # the parent gave up on this document
    doc = os.fork()
    if doc == 0:
        ctl.detach()
        os.close(ctl_fd)
        _document(harness, spec, stdin_r, stdout_w, stderr_w)
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)  # the parent sees end of file as soon as the document ends
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:  # reap whatever is reparented here; the document's own end ends the namespace
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == doc:
            try:
                ctl.send(b"exit %d" % status)
            finally:
                os._exit(0)


def _document(harness: str, spec: dict[str, int], stdin_r: int, stdout_w: int, stderr_w: int) -> None:
    """C: the document's process: its pipes, its limits, no capabilities, then the harness."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any fresh Python
        for src, dst in ((stdin_r, 0), (stdout_w, 1), (stderr_w, 2)):
            os.dup2(src, dst)
        _close_all_but({0, 1, 2})
        memory = int(spec["memory_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (int(spec["cpu_s"]), int(spec["cpu_s"]) + 5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        check_no_capabilities()  # dropped by its pid 1, for good
        from inner.sdk import child

        sys.argv = [sys.argv[0], harness]
        child.main()
    except BaseException:  # noqa: BLE001 - a setup failure must never let the harness run
        os.write(2, f"sandbox document setup failed:\n{traceback.format_exc()}".encode())
    os._exit(70)


def _fork_document(harness: str, spec: dict[str, int], fds: list[int]) -> None:
    """A, right after the server's fork: new namespaces, fork B (their pid 1), exit."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _close_all_but({2, *fds})
        _check(
            _libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS),
            "unshare",
        )
        if os.fork() == 0:
            _document_init(harness, spec, fds)
    except BaseException:  # noqa: BLE001
        os.write(2, f"sandbox fork failed:\n{traceback.format_exc()}".encode())
        os._exit(71)
    os._exit(0)


def _probe(timeout_s: float = 30.0) -> bool:
    """Whether a document's namespaces and mounts can be built here: one fork whose pid 1 says
    hello and, told nothing, exits (a failure's traceback is on stderr, in ``sandbox.log``)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = [os.open("/dev/null", os.O_RDWR) for _ in range(3)] + [theirs.detach()]
    try:
        sys.stderr.flush()
        if os.fork() == 0:
            ours.detach()
            _fork_document("/harness", {"tmp_mb": 1, "memory_mb": 256, "cpu_s": 1}, fds)
    finally:
        for fd in fds:
            os.close(fd)
    with ours:
        ready, _, _ = select.select([ours], [], [], timeout_s)
        return bool(ready) and ours.recv(16) == b"hello"


def serve(harness: str) -> None:
    """The server's loop: one fork per ``fork`` request until the parent closes the socket."""
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # the warm part: stdlib, pydantic, the SDK and its harness-facing aliases (never the harness)
    import importlib

    for name in ("inner.sdk.child", *(f"inner.{alias}" for alias in ("contract", "templates", "errors"))):
        importlib.import_module(name)

    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned B processes are reaped here (their CPU is accounted)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    gc.freeze()  # the imported objects stay shared with every fork (no copy-on-write by the collector)
    ctl.send(b"ready" if _probe() else b"failed")
    while True:
        readable, _, _ = select.select([ctl, wake_r], [], [])
        if wake_r in readable:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
        if ctl in readable:
            msg, fds, _, _ = socket.recv_fds(ctl, 4096, 8)
            if not msg:
                os._exit(0)
            try:
                spec = json.loads(msg)
                if spec.get("t") != "fork" or len(fds) != 4:
                    raise ValueError(f"bad fork request: {msg[:200]!r} with {len(fds)} descriptors")
                sys.stderr.flush()
                if os.fork() == 0:
                    ctl.detach()
                    _fork_document(harness, spec, fds)
            except Exception:  # noqa: BLE001 - a failed fork fails its document only
                os.write(2, f"fork server: {traceback.format_exc()}".encode())
            finally:
                for fd in fds:
                    os.close(fd)


if __name__ == "__main__":
    serve(sys.argv[1])
