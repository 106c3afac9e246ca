"""Process limits and clean errors (issue 15, item 6): open-file limits raised and checked up
front, a harness that cannot load stops the run before any document, a full or read-only disk
and torn state files give one clear message, stray temp files of a killed run are swept, and a
server that ignores SIGTERM does not hold up the stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inner.io import read_jsonl
from inner.sdk.errors import HarnessError
from meta.loop import run_evolve
from tests.conftest import ONE_SHOT_HARNESS, scenario, write_harness
from tests.scenario import RoundPlan
from tests.test_meta import evolve_config, meta_corpus  # noqa: F401 (a fixture)

BIN = Path(sys.executable).parent
GENERATE = BIN / "autodata-generate"
EVOLVE = BIN / "autodata-evolve"


def _cli(exe: Path, tmp_path: Path, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, **kw
    )


def _openai_args(url: str, corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "llm=openai", f"llm.endpoints.default.base_url={url}", "llm.endpoints.default.api_key_env=null",
        "llm.endpoints.default.max_retries=1", f"task.corpus={corpus}", "inner.max_rounds=1", "progress=false",
        *extra, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


# == a harness that cannot load ================================================================


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("async def run(agent:\n", "failed to import: SyntaxError"),
        ("async def propose(agent):\n    pass\n", "must define `async def run(agent)`"),
    ],
    ids=["syntax-error", "no-run"],
)
def test_generate_with_a_harness_that_cannot_load_exits_1_before_any_document(code, reason, server, corpus, tmp_path):
    h = write_harness(tmp_path / "broken", code)
    srv = server(scenario(RoundPlan()))
    res = _cli(GENERATE, tmp_path, *_openai_args(srv.base_url, corpus, tmp_path / "run", f"harness={h}"))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert reason in out and "no document was started" in out and "Traceback" not in out
    assert srv.count() == 0 and not list((tmp_path / "run").glob("trajectories/*.json"))


def test_evolve_with_a_start_harness_that_cannot_load_stops_before_the_backend(meta_corpus, tmp_path):  # noqa: F811
    h = write_harness(tmp_path / "broken", "import no_such_module_xyz\n" + ONE_SHOT_HARNESS)
    cfg = evolve_config(meta_corpus, f"meta.start_harness={h}")
    with pytest.raises(HarnessError, match="failed to import: ModuleNotFoundError"):
        # an unreachable URL: the check comes before any endpoint is probed
        asyncio.run(run_evolve(cfg, tmp_path / "run", base_urls={"default": "http://127.0.0.1:9/v1"}))
    assert not (tmp_path / "run" / "lineage").exists()


# == stray temp files of a killed run ==========================================================


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _litter(run_dir: Path, *, lineage: bool = True) -> tuple[list[Path], list[Path]]:
    """Temp files a kill leaves behind, and files that must stay: ``(stray, kept)``."""
    dead = _dead_pid()
    stray = [
        run_dir / ".stats.json.k3j_x9a2.tmp",
        run_dir / "trajectories" / ".doc-mark-a.json.abcd1234.tmp",
        run_dir / "evals" / "c0ffee" / "e-1" / "trajectories" / ".d.json.zz99zz99.tmp",
        run_dir / "harnesses" / f"0123456789ab.tmp{dead}",
        run_dir / "export" / "0123456789ab.tmp",
    ]
    kept = [
        run_dir / "trajectories" / "doc-mark-z.json",
        run_dir / "notes.tmp",  # not the pattern of an atomic write
        run_dir / "harnesses" / "0123456789ab" / "prompts" / ".x.abcd1234.tmp",  # harness data
        run_dir / "harnesses" / f"fedcba987654.tmp{os.getpid()}",  # a live writer's
    ] + ([run_dir / "lineage" / ".git" / ".index.abcd1234.tmp"] if lineage else [])
    for p in stray + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        if ".tmp" in p.name and not p.name.startswith("."):  # a directory
            p.mkdir()
            (p / "harness.py").write_text("half")
        else:
            p.write_text("{")
    return stray, kept


def test_sweep_removes_what_a_kill_left_and_nothing_else(tmp_path):
    from inner.io import sweep_stale_temps

    stray, kept = _litter(tmp_path / "run")
    assert sorted(sweep_stale_temps(tmp_path / "run")) == sorted(stray)
    assert not any(p.exists() for p in stray) and all(p.exists() for p in kept)
    assert sweep_stale_temps(tmp_path / "run") == [] and sweep_stale_temps(tmp_path / "nowhere") == []


def test_the_next_generate_run_in_the_directory_sweeps_its_temp_files(make_cfg, server, tmp_path):
    from tests.conftest import run

    stray, kept = _litter(tmp_path / "run")
    stats = run(make_cfg("task.limit=1", "inner.max_rounds=1"), tmp_path / "run", server(scenario(RoundPlan())))
    assert stats["finished"] == 1
    assert not any(p.exists() for p in stray) and all(p.exists() for p in kept)


def test_the_next_evolve_run_in_the_directory_sweeps_its_temp_files(meta_corpus, tmp_path):  # noqa: F811
    stray, kept = _litter(tmp_path / "run", lineage=False)
    h = write_harness(tmp_path / "broken", "async def run(agent:\n")  # stops right after the sweep
    with pytest.raises(HarnessError):
        asyncio.run(run_evolve(evolve_config(meta_corpus, f"meta.start_harness={h}"), tmp_path / "run", base_urls={}))
    assert not any(p.exists() for p in stray) and all(p.exists() for p in kept)


# == a full or read-only disk, torn state files ================================================

#: the CLI with os.fsync failing ENOSPC on any file whose path contains argv[1] (a full disk
#: as ext4 reports it: at fsync), then autodata-generate with the remaining arguments
FULL_DISK_CLI = """
import errno, os, sys
needle, real = sys.argv.pop(1), os.fsync
def fsync(fd):
    if needle in os.readlink(f"/proc/self/fd/{fd}"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(fd)
os.fsync = fsync
sys.argv[0] = "autodata-generate"
from inner.cli import main
main()
"""


def test_atomic_write_on_a_full_disk_is_a_storage_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from inner.io import StorageError, atomic_write_text

    path = tmp_path / "stats.json"
    atomic_write_text(path, "old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as exc:
        atomic_write_text(path, "new")
    assert isinstance(exc.value, OSError) and exc.value.errno == errno.ENOSPC
    assert f"cannot write {path}: No space left on device (ENOSPC); free space" in str(exc.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_a_disk_that_fills_mid_run_stops_generate_with_one_message_and_loses_nothing(server, corpus, tmp_path):
    run_dir = tmp_path / "run"
    srv = server(scenario(RoundPlan()))
    args = _openai_args(srv.base_url, corpus, run_dir, "inner.max_concurrent_documents=1", "task.order=name")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CLI, "doc-mark-b", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out and "Logging error" not in out
    assert out.count("No space left on device (ENOSPC)") == 1 and "doc-mark-b" in out, out
    # document A finished before the disk filled: it is on disk, whole
    assert len(read_jsonl(run_dir / "dataset.jsonl")) == 1
    assert not list(run_dir.rglob("*.tmp"))
    # with space again, the same command finishes the rest without redoing A
    n = srv.count()
    res2 = _cli(GENERATE, tmp_path, *args)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert len(read_jsonl(run_dir / "dataset.jsonl")) == 3
    assert all("MARK-A" not in json.dumps(b["messages"]) for _, b in srv.requests[n:])


def _mount_tmpfs(path: Path, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=1m", *options))
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    made: list[Path] = []

    def mount(path: Path, *options: str) -> None:
        if not _mount_tmpfs(path, *options):
            pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
        made.append(path)

    yield mount
    for p in reversed(made):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.mark.parametrize("exe", [GENERATE, EVOLVE], ids=["generate", "evolve"])
def test_a_read_only_run_directory_is_one_message_before_hydra(exe, mounts, corpus, tmp_path):
    # root ignores file modes, so the directory is a read-only tmpfs mount
    run_dir = tmp_path / "ro"
    mounts(run_dir, "ro")
    res = _cli(exe, tmp_path, *_openai_args("http://127.0.0.1:9/v1", corpus, run_dir))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert out.count("Read-only file system (EROFS)") == 1 and str(run_dir) in out
    assert "Traceback" not in out and "choose another hydra.run.dir" in out


def test_a_full_run_directory_is_one_message_before_hydra(mounts, corpus, tmp_path):
    run_dir = tmp_path / "full"
    mounts(run_dir)
    with contextlib.suppress(OSError), open(run_dir / "filler", "wb") as fh:  # fill the 1 MiB tmpfs
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    res = _cli(GENERATE, tmp_path, *_openai_args("http://127.0.0.1:9/v1", corpus, run_dir))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert out.count("No space left on device (ENOSPC)") == 1 and "Traceback" not in out


def test_an_unwritable_run_directory_without_a_mount(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    from inner.entrypoint import check_run_dir_writable

    def refuse(*a: Any, **k: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SystemExit) as exc:
        check_run_dir_writable([f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 1
    assert "Read-only file system (EROFS)" in capsys.readouterr().err
    check_run_dir_writable(["--help"])  # flags: left to Hydra


STATE_FILES = {
    "splits.json": '{"train": ["doc-mark-t1.txt"], "val": ["doc-mark-v',
    "archive.json": '{"entries": [{"commit": "abc", "harness_id"',
    "history.jsonl": '{"iteration": 1, "status": "rejected"}\n[1, 2, 3]\n',
}


@pytest.mark.parametrize("name", list(STATE_FILES))
def test_a_torn_state_file_stops_evolve_with_one_message_and_is_left_alone(name, meta_corpus, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_text(STATE_FILES[name])
    res = _cli(
        EVOLVE, tmp_path, "llm=openai", "llm.endpoints.default.base_url=http://127.0.0.1:9/v1",
        "llm.endpoints.default.api_key_env=null", f"task.corpus={meta_corpus}", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert f"{run_dir / name} is" in out and ("torn or corrupt" in out or "is corrupt" in out)
    assert "Traceback" not in out and "cannot be reached" not in out  # before the backend
    assert (run_dir / name).read_text() == STATE_FILES[name]


def test_a_history_line_torn_inside_a_character_is_skipped(tmp_path):
    from meta.loop import load_history

    p = tmp_path / "history.jsonl"
    p.write_bytes(b'{"iteration": 1, "status": "rejected"}\n{"iteration": 2, "reason": "caf\xc3')
    assert load_history(p) == [{"iteration": 1, "status": "rejected"}]


# == the open-file limit =======================================================================


def _nofile(soft: int, hard: int) -> Any:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path):
    prog = (
        "import resource\n"
        "from inner.entrypoint import check_open_files, cli_guard\n"
        "with cli_guard():\n"
        "    print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "    check_open_files(documents=256, connections=8, what='inner.max_concurrent_documents=256')\n"
        "    print('fits')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, preexec_fn=_nofile(1024, 4096)
    )
    assert res.returncode == 0 and res.stdout.split() == ["4096", "fits"], res.stdout + res.stderr


def test_a_concurrency_the_open_file_limit_cannot_hold_is_refused_up_front(server, corpus, tmp_path):
    srv = server(scenario(RoundPlan()))
    args = _openai_args(srv.base_url, corpus, tmp_path / "run", "inner.max_concurrent_documents=256")
    res = _cli(GENERATE, tmp_path, *args, preexec_fn=_nofile(1024, 1024))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "inner.max_concurrent_documents=256 keeps up to 256 documents in flight" in out
    assert "this process may open 1024 (ulimit -n" in out and "Lower inner.max_concurrent_documents" in out
    assert "Traceback" not in out and "Too many open files" not in out
    assert srv.count() == 0 and not list((tmp_path / "run").glob("trajectories/*.json"))
    # evolve counts the evaluations in flight too
    res = _cli(EVOLVE, tmp_path, *args[:-1], "meta.in_flight=4", "inner.max_concurrent_documents=64",
               f"hydra.run.dir={tmp_path / 'evolve'}", preexec_fn=_nofile(1024, 1024))  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "meta.in_flight=4 x 2 evaluations x inner.max_concurrent_documents=64" in out, out


# == a stop within 5 s whatever the server does ===============================================

#: ``vllm serve ...`` stand-in: healthy at once, every completion takes a minute, and SIGTERM
#: is trapped (a server busy in a long step); its pid goes to $FAKE_VLLM_DIR/pid and a line per
#: request to $FAKE_VLLM_DIR/requests
FAKE_VLLM = """#!{python}
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

out = os.environ["FAKE_VLLM_DIR"]
signal.signal(signal.SIGTERM, lambda *a: time.sleep(30))
port = int(sys.argv[sys.argv.index("--port") + 1])
served = sys.argv[sys.argv.index("--served-model-name") + 1]


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({{"data": [{{"id": served, "object": "model"}}]}})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(os.path.join(out, "requests"), "a") as fh:
            fh.write("x\\n")
        time.sleep(60)
        self._send({{}})


with open(os.path.join(out, "pid"), "w") as fh:
    fh.write(str(os.getpid()))
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_one_sigterm_stops_a_run_whose_server_traps_sigterm_within_5_s(corpus, tmp_path):
    import signal
    import time

    bindir, state = tmp_path / "bin", tmp_path / "vllm"
    bindir.mkdir()
    state.mkdir()
    (bindir / "vllm").write_text(FAKE_VLLM.format(python=sys.executable))
    (bindir / "vllm").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env |= {"PATH": f"{bindir}:{env.get('PATH', '')}", "FAKE_VLLM_DIR": str(state)}
    args = [
        "llm=vllm", "llm.backend.startup_timeout_s=60", f"task.corpus={corpus}", "inner.max_rounds=1",
        "progress=false", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [str(GENERATE), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 90
    while not (state / "requests").exists():  # the server is up and the documents wait on it
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "the run never reached the server"
        time.sleep(0.05)
    server_pid = int((state / "pid").read_text())
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    try:
        assert took < 5.0, f"{took:.1f} s\n{out}"
        assert proc.returncode == 143, out
        assert "interrupted by SIGTERM" in out and "Traceback" not in out
        for _ in range(20):  # the server does not outlive the run
            if not _alive(server_pid):
                break
            time.sleep(0.05)
        assert not _alive(server_pid), "the server outlived the run"
    finally:
        with contextlib.suppress(OSError):
            os.kill(server_pid, signal.SIGKILL)
