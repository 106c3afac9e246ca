"""The harness contract (inner/engine/harness.py): a directory with ``async def run(agent)``, run sealed
in the sandbox, one process per document. Which harness runs (another directory, an edited
one), its identity, what happens when it is broken (crashed documents, the run goes on), and
the roles it may not call."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inner.engine.harness import harness_id, resolve_harness_dir
from inner.engine.records import RunWriter
from inner.paths import PROJECT_ROOT
from inner.sandbox.files import harness_content_hash
from inner.sdk.errors import HarnessError
from tests.conftest import ONE_SHOT_HARNESS, run, scenario, write_harness
from tests.scenario import RoundPlan

BASELINE = PROJECT_ROOT / "harnesses" / "baseline"
ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])


def copy_harness(dest: Path) -> Path:
    shutil.copytree(BASELINE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _challenger_systems(srv) -> list[str]:
    return [b["messages"][0]["content"] for r, b in srv.requests if r == "challenger"]


# -- which harness runs -----------------------------------------------------------------------


def test_harness_from_another_directory_is_used(make_cfg, server, tmp_path):
    h = copy_harness(tmp_path / "edited_harness")
    _edit(h / "prompts" / "challenger.md", "You are the challenger", "EDITED-PROMPT-7731. You are the challenger")
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 3
    systems = _challenger_systems(srv)
    assert len(systems) == 3 and all("EDITED-PROMPT-7731" in s for s in systems)
    assert stats["harness_id"] == harness_id(h)
    assert stats["harness_id"].startswith("edited_harness@") and not stats["harness_id"].endswith(
        harness_content_hash(BASELINE)
    )
    writer = RunWriter(tmp_path / "run")
    assert {e.harness_id for e in writer.load_examples()} == {stats["harness_id"]}
    assert {t.harness_id for t in writer.load_trajectories()} == {stats["harness_id"]}


def test_harness_id_tracks_content(tmp_path):
    a = copy_harness(tmp_path / "same_name_a" / "h")
    b = copy_harness(tmp_path / "same_name_b" / "h")
    assert harness_id(a) == harness_id(b)
    assert harness_content_hash(copy_harness(tmp_path / "other_name")) == harness_content_hash(a)
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "harness.cpython-311.pyc").write_bytes(b"compiled")  # not content
    assert harness_id(a) == harness_id(b)
    _edit(b / "prompts" / "main_agent.md", "\n", "\n\n")
    assert harness_id(b) != harness_id(a)


def test_identical_harness_copy_runs_its_own_files(make_cfg, server, tmp_path):
    # A harness is edited in place; a pristine copy elsewhere has the original content and
    # therefore the original id. Running the copy must use the copy's prompts.
    a = copy_harness(tmp_path / "a" / "copied_twice")
    original_id = harness_id(a)
    _edit(a / "prompts" / "challenger.md", "You are the challenger", "STALE-EDIT-4242. You are the challenger")
    b = copy_harness(tmp_path / "b" / "copied_twice")
    assert harness_id(b) == original_id
    srv = server(scenario(ACCEPT))
    run(make_cfg(f"harness={b}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run", srv)
    systems = _challenger_systems(srv)
    assert systems and not any("STALE-EDIT-4242" in s for s in systems)


def test_harness_edited_in_place_uses_its_new_prompts(make_cfg, server, tmp_path):
    # e.g. a meta loop that edits a harness directory and evaluates it again in one process
    h = copy_harness(tmp_path / "in_place_harness")
    srv = server(scenario(ACCEPT))
    first = run(make_cfg(f"harness={h}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run1", srv)
    _edit(h / "prompts" / "challenger.md", "You are the challenger", "NEW-EDIT-5151. You are the challenger")
    second = run(make_cfg(f"harness={h}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run2", srv)
    assert first["harness_id"] != second["harness_id"]
    systems = _challenger_systems(srv)
    assert len(systems) == 2 and "NEW-EDIT-5151" not in systems[0]
    assert "NEW-EDIT-5151" in systems[1]


def test_resolve_harness_dir(tmp_path):
    assert resolve_harness_dir("baseline") == BASELINE.resolve()
    with pytest.raises(HarnessError, match="neither a directory"):
        resolve_harness_dir(str(tmp_path / "does-not-exist"))
    (tmp_path / "no_harness_py").mkdir()
    with pytest.raises(HarnessError, match="has no harness.py"):
        resolve_harness_dir(str(tmp_path / "no_harness_py"))


# -- broken harnesses: the run stops before any document ---------------------------------------


@pytest.mark.parametrize(
    "code, reason",
    [
        ("import definitely_not_a_module_xyz\n" + ONE_SHOT_HARNESS, "failed to import: ModuleNotFoundError"),
        ("async def run(agent:\n", "failed to import: SyntaxError"),
        ("raise RuntimeError('boom at import')\n", "failed to import: RuntimeError: boom at import"),
        ("async def propose(ctx, feedback): ...\n", "must define `async def run(agent)`"),
        ("def run(agent):\n    return None\n", "must define `async def run(agent)`"),
    ],
    ids=["import-error", "syntax-error", "raises-at-import", "no-run", "sync-run"],
)
def test_harness_that_cannot_load_stops_the_run_before_any_document(make_cfg, server, tmp_path, code, reason):
    # one import check in the sandbox before any document: every document would crash alike
    h = write_harness(tmp_path / "broken", code)
    srv = server(scenario(ACCEPT))
    with pytest.raises(HarnessError, match="harness broken cannot run, so no document was started") as exc:
        run(make_cfg(f"harness={h}", "task.limit=2"), tmp_path / "run", srv)
    assert reason in str(exc.value)
    assert srv.count() == 0 and not list((tmp_path / "run").glob("trajectories/*.json"))


def test_harness_raising_on_one_document_crashes_only_that_one(make_cfg, server, tmp_path):
    code = ONE_SHOT_HARNESS.replace(
        "async def run(agent):\n",
        "async def run(agent):\n    if 'MARK-A' in agent.doc.text:\n        raise RuntimeError('boom for A')\n",
    )
    h = write_harness(tmp_path / "raising", code)
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}"), tmp_path / "run", srv)
    assert stats["accepted"] == 2 and stats["crashed"] == 1 and stats["finished"] == 3
    by_marker = {t.title.split()[-1]: t for t in RunWriter(tmp_path / "run").load_trajectories()}
    a = by_marker["MARK-A"]
    assert a.status == "crashed" and a.rounds == [] and "raised" in a.end_reason
    assert "Traceback" in a.harness_error and "RuntimeError: boom for A" in a.harness_error
    assert by_marker["MARK-B"].status == by_marker["MARK-C"].status == "accepted"
    assert by_marker["MARK-B"].harness_error is None


# -- roles and budgets are the parent's -------------------------------------------------------

FORBIDDEN = ("judge", "weak_solver", "strong_solver", "quality_verifier")

PROBING_HARNESS = f"""
from inner.sdk.errors import HarnessError


async def run(agent):
    for role in {FORBIDDEN!r}:
        try:
            await agent.llm(role, [{{"role": "user", "content": "peek at the reference answer"}}])
        except HarnessError as exc:
            await agent.note(f"refused {{role}}: {{type(exc).__name__}}: {{exc}}")
        else:
            await agent.note(f"ALLOWED {{role}}")
"""


def test_harness_calling_a_forbidden_role_is_refused(make_cfg, server, tmp_path):
    h = write_harness(tmp_path / "cheating", PROBING_HARNESS)
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "task.limit=1"), tmp_path / "run", srv)
    assert srv.count() == 0  # not one request reached the server
    assert stats["errored"] == 0 and stats["crashed"] == 0
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    assert traj.status == "exhausted"  # the harness caught the refusals and returned
    assert [e.kind for e in traj.events] == ["refused", "note"] * len(FORBIDDEN)
    for role, refused, note in zip(FORBIDDEN, traj.events[::2], traj.events[1::2], strict=True):
        assert repr(role) in refused.text  # the parent's refusal names the role
        assert note.text.startswith(f"refused {role}: HarnessError:")  # an exception in the harness
    assert traj.harness_usage == {}


def test_harness_call_budget_ends_the_document(make_cfg, server, tmp_path):
    code = ONE_SHOT_HARNESS.replace(
        "    res = await agent.llm_json(",
        "    await agent.llm('main_agent', messages)\n    res = await agent.llm_json(",
    )
    h = write_harness(tmp_path / "greedy", code)
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "task.limit=1", "inner.harness_max_calls=1"), tmp_path / "run", srv)
    assert srv.count("main_agent") == 1 and srv.count("challenger") == 0
    assert stats["accepted"] == 0 and stats["crashed"] == 0
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    assert traj.status == "exhausted" and "inner.harness_max_calls" in traj.end_reason


def test_unusable_structured_output_in_the_sandbox_is_a_typed_schema_failure(make_cfg, server, tmp_path):
    """``agent.llm_json`` still without a usable reply after its repair is reported to the
    parent and counted as an ``LLMSchemaError`` of the role (issue 10: every failure typed and
    counted), in ``stats.json``, ``calls.jsonl`` and the trajectory's events."""
    import json

    code = (
        "from pydantic import BaseModel\n\n\n"
        "class Needs(BaseModel):\n    field_the_server_never_writes: int\n\n\n"
        "async def run(agent):\n"
        "    res = await agent.llm_json('challenger', [{'role': 'user', 'content': agent.document(300)}], Needs)\n"
        "    await agent.note(f'ok={res.ok}')\n"
    )
    h = write_harness(tmp_path / "unusable_json", code)
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "task.limit=1"), tmp_path / "run", srv)
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    reported = [e for e in traj.events if e.kind == "schema_failure"]
    assert len(reported) == 1 and reported[0].role == "challenger" and "Needs" in reported[0].text
    assert srv.count() == 2  # the request and its one repair
    assert traj.events[-1].text == "ok=False"
    assert stats["failures_by_kind"] == {"schema": len(reported)} and stats["failures"] == len(reported)
    assert stats["this_invocation"]["challenger"]["failures"] == len(reported)
    assert stats["usage_per_role"]["challenger"]["failures"] == len(reported)  # from the records
    lines = [json.loads(x) for x in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x["error"] == "schema" and x["role"] == "challenger") == len(reported)
    assert stats["errored"] == 0  # the harness's unusable output is not an infrastructure error
    cached = "".join(p.read_text() for p in (tmp_path / "run" / "llm_cache").glob("segment-*.jsonl"))
    assert '"role": "challenger"' not in cached  # its replies are not cached: a rerun asks again


def test_a_run_executes_a_snapshot_of_its_harness(tmp_path):
    """Editing the harness directory while a run is in flight does not change the code the run
    executes (it runs a copy taken at its start, with the same id)."""
    from inner.sandbox.files import copy_harness as snapshot

    h = copy_harness(tmp_path / "h")
    copy = snapshot(h, tmp_path / "snap" / "h")
    assert harness_id(copy) == harness_id(h) and copy.name == "h"
    before = (copy / "harness.py").read_bytes()
    _edit(h / "harness.py", "async def run(", "async def run_edited_mid_run(")
    assert (copy / "harness.py").read_bytes() == before and harness_id(copy) != harness_id(h)


def test_usable_structured_output_in_the_sandbox_is_cached_and_replayed(make_cfg, server, tmp_path):
    """The replies of an ``agent.llm_json`` request that ended usable are cached (written when
    the sandbox reports it usable), so a rerun of the same run replays them."""
    srv = server(scenario(ACCEPT))
    run(make_cfg("task.limit=1", "inner.max_rounds=1"), tmp_path / "run", srv)
    cached = "".join(p.read_text() for p in (tmp_path / "run" / "llm_cache").glob("segment-*.jsonl"))
    assert cached.count('"role": "challenger"') == srv.count("challenger") >= 1
