"""Process limits and clean errors (issue 15, item 6): open-file limits raised and checked up
front, a harness that cannot load stops the run before any document, a full or read-only disk
and torn state files give one clear message, stray temp files of a killed run are swept, and a
server that ignores SIGTERM does not hold up the stop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
