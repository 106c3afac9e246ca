"""The implementer and candidate validation: edits of harness code and prompts, the dry run in
the sandbox, one repair with the error shown, and the meta settings that shape the prompt."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import git
import pytest

import inner.engine.harness
from inner.engine.harness import HARNESSES_DIR
from inner.io import read_jsonl
from inner.sandbox.files import harness_content_hash
from inner.sandbox.process import dry_run_harness
from inner.sdk.child import schema_instance
from inner.sdk.contract import Challenge, model_schema
from inner.sdk.errors import ConfigError, HarnessError
from inner.sdk.templates import render
from meta.analyze import PROMPTS, contract_text, history_summary
from meta.edit import check_prompt_files, edit_plan_model
from tests.conftest import write_corpus, write_harness
from tests.helpers.conformance import ACCEPT, TOO_EASY, ConformanceScenario, response_schema
from tests.test_meta import GOOD_EDIT, NEUTRAL_EDIT, WORSE_EDIT, MetaScenario, evolve, evolve_config, whole_harness

CODE_EDIT = """FILE: harness.py
<<<<<<< SEARCH
        res = await agent.llm_json("challenger", messages, Challenge)
=======
        messages[0]["content"] = "IMPROVED " + messages[0]["content"]
        res = await agent.llm_json("challenger", messages, Challenge)
>>>>>>> REPLACE
"""
NOMATCH_EDIT = """FILE: prompts/challenger.md
<<<<<<< SEARCH
A sentence that appears nowhere in the challenger prompt, not even nearly.
=======
Anything.
>>>>>>> REPLACE
"""
PLACEHOLDER_EDIT = """FILE: prompts/challenger.md
<<<<<<< SEARCH
$feedback_block
=======
$feedback_block
$mystery_value
>>>>>>> REPLACE
"""
CRASH_EVERYWHERE = whole_harness("raise RuntimeError('boom in every run')")


@pytest.fixture
def meta_corpus(tmp_path: Path) -> Path:
    """The corpus of tests/test_meta.py (its splits are set by :func:`evolve_config`)."""
    return write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])


def implementer_requests(srv) -> list[dict[str, Any]]:
    return [b for r, b in srv.requests if r == "implementer"]


def evaluated_contents(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "evals").iterdir()}


# -- through the meta loop ----------------------------------------------------------------------


def test_code_edit_is_applied_validated_evaluated_and_admitted(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([CODE_EDIT]))
    summary = evolve(evolve_config(meta_corpus, "meta.max_iterations=1"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "admitted" and h["candidate_val"] == 1.0 and h["parent_val"] == 0.5
    assert h["implementer_replies"] == [CODE_EDIT] and "edit_errors" not in h
    assert summary["best_val_pass_rate"] == 1.0
    repo = git.Repo(tmp_path / "run" / "lineage")
    commit = repo.commit(h["candidate"])
    assert "changed: harness.py\n" in commit.message
    assert [d.a_path for d in repo.commit(h["parent"]).diff(commit)] == ["harness.py"]  # code, not a prompt
    assert 'messages[0]["content"] = "IMPROVED "' in (commit.tree / "harness.py").data_stream.read().decode()
    # the candidate was evaluated (its own evals directory) after passing validation
    assert h["candidate_harness_id"].split("@")[1] in evaluated_contents(tmp_path / "run")
    # blocks format: no response_format; the prompt carries the contract rendered from inner/engine/harness.py
    (body,) = implementer_requests(srv)
    assert "response_format" not in body
    system = body["messages"][0]["content"]
    assert contract_text() in system and "async def run(agent: Agent) -> None" in system
    assert "propose(ctx" not in system


def test_failed_edit_is_repaired_on_its_second_attempt(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([NOMATCH_EDIT, GOOD_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "admitted"
    assert h["implementer_replies"] == [NOMATCH_EDIT, GOOD_EDIT] and h["implementer_reply"] == GOOD_EDIT
    assert "did not match prompts/challenger.md" in h["edit_errors"][0]
    first, second = implementer_requests(srv)
    assert second["messages"][: len(first["messages"])] == first["messages"]  # the same request ...
    assert second["messages"][-2] == {"role": "assistant", "content": NOMATCH_EDIT}  # ... its reply ...
    assert "did not match prompts/challenger.md" in second["messages"][-1]["content"]  # ... and the error


def test_candidate_failing_its_dry_run_is_repaired_and_never_evaluated(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([CRASH_EVERYWHERE, CODE_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "admitted" and len(h["implementer_replies"]) == 2
    err = h["edit_errors"][0]
    assert err.startswith("candidate fails validation: the harness raised in the dry run")
    assert "RuntimeError: boom in every run" in err
    # only the root (validation, training) and the repaired candidate were evaluated
    root = h["parent_harness_id"].split("@")[1]
    assert evaluated_contents(tmp_path / "run") == {root, h["candidate_harness_id"].split("@")[1]}


def test_edit_that_fails_twice_is_an_invalid_edit_with_both_replies(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([NOMATCH_EDIT, PLACEHOLDER_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "invalid-edit" and h["candidate"] is None and h["candidate_val"] is None
    assert h["implementer_replies"] == [NOMATCH_EDIT, PLACEHOLDER_EDIT]
    assert "did not match" in h["edit_errors"][0]
    assert h["reason"] == h["edit_errors"][1] and "uses $mystery_value, which no harness code passes" in h["reason"]
    assert h["edit_error"] == "validation"
    assert evaluated_contents(tmp_path / "run") == {h["parent_harness_id"].split("@")[1]}


def test_editable_scope_hides_other_files_and_rejects_their_edits(meta_corpus, server, tmp_path):
    # prompts only: the code edit is out of scope (an invalid edit, never evaluated), the repair
    # that edits a prompt is admitted; the implementer was never shown harness.py
    srv = server(MetaScenario([CODE_EDIT, GOOD_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1", "meta.editable=[prompts/*]"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "admitted" and h["implementer_replies"] == [CODE_EDIT, GOOD_EDIT]
    assert "edit of 'harness.py' rejected: only files matching ['prompts/*']" in h["edit_errors"][0]
    first, _ = implementer_requests(srv)
    shown = first["messages"][-1]["content"]
    assert "=== prompts/challenger.md ===" in shown and "=== harness.py ===" not in shown
    # the default scope shows every file
    srv = server(MetaScenario([GOOD_EDIT]))
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1"), tmp_path / "run2", srv)
    (body,) = implementer_requests(srv)
    assert "=== harness.py ===" in body["messages"][-1]["content"]


def test_editable_scope_matching_no_file_stops_the_run(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([GOOD_EDIT]))
    with pytest.raises(HarnessError, match=r"meta.editable=\['nothing/\*'\] matches none of the starting harness"):
        evolve(evolve_config(meta_corpus, "meta.editable=[nothing/*]"), tmp_path / "run", srv)
    assert srv.requests == []


def test_history_lines_limits_the_history_shown(meta_corpus, server, tmp_path):
    srv = server(MetaScenario([GOOD_EDIT, NEUTRAL_EDIT, WORSE_EDIT]))
    cfg = evolve_config(meta_corpus, "meta.max_iterations=3", "meta.selection=greedy", "meta.history_lines=1")
    evolve(cfg, tmp_path / "run", srv)
    assert [h["status"] for h in read_jsonl(tmp_path / "run" / "history.jsonl")] == ["admitted", "rejected", "rejected"]
    for role in ("analyzer", "implementer"):
        third = [b for r, b in srv.requests if r == role][2]["messages"][1]["content"]
        assert "iter 2: parent" in third and "iter 1: parent" not in third
    assert history_summary([{"iteration": 1, "status": "admitted"}], last=0).startswith("(history not shown")


def test_json_edit_format_sends_the_schema(meta_corpus, server, tmp_path):
    edit = {
        "edits": [
            {
                "file": "harness.py",
                "search": '        res = await agent.llm_json("challenger", messages, Challenge)',
                "replace": '        messages[0]["content"] = "IMPROVED " + messages[0]["content"]\n'
                '        res = await agent.llm_json("challenger", messages, Challenge)',
            }
        ]
    }
    srv = server(MetaScenario([edit]))  # type: ignore[list-item]
    evolve(evolve_config(meta_corpus, "meta.max_iterations=1", "meta.edit_format=json"), tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["status"] == "admitted"
    (body,) = implementer_requests(srv)
    assert body["response_format"]["schema"]["properties"]["edits"]["maxItems"] == 6
    assert contract_text() in body["messages"][0]["content"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("meta.edit_format=xml", "meta.edit_format='xml' is invalid: use one of ('auto', 'blocks', 'json')"),
        ("meta.history_lines=-1", "meta.history_lines=-1 is invalid: must be >= 0"),
        ("meta.analyzer_chars=0", "meta.analyzer_chars=0 is invalid"),
        ("meta.editable=[]", "is invalid: must be a non-empty list of file patterns"),
    ],
)
def test_meta_settings_are_validated(meta_corpus, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evolve_config(meta_corpus, override)


def test_implementer_prompts_render_the_contract():
    values = {"analysis": "a", "history": "h", "files": "f", "contract": contract_text(), "max_edits": 6}
    for name in ("implementer.md", "implementer_json.md"):
        system, user = render(PROMPTS / name, **values)
        assert (inner.engine.harness.__doc__ or "").strip() in system["content"]
        assert "$placeholders" in system["content"] and "propose(ctx" not in system["content"]
        assert user["content"].startswith("## Analysis")  # the whole instruction is the system part


# -- the dry run ------------------------------------------------------------------------------


def dry(path: Path, **kw: Any) -> str | None:
    return asyncio.run(dry_run_harness(path, **kw))


@pytest.mark.parametrize("name", ["baseline", "paper_baseline", "orchestrator", "cot_self_instruct"])
def test_shipped_harnesses_pass_the_dry_run(name):
    assert dry(HARNESSES_DIR / name) is None
    assert check_prompt_files(HARNESSES_DIR / name) is None


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("async def run(agent):\n    raise ValueError('bad idea')\n", "ValueError: bad idea"),
        ("import os\nasync def run(agent):\n    os._exit(4)\n", "exited with code 4"),
        ("async def run(agent:\n", "failed to import: SyntaxError"),
        ("async def run(agent):\n    await agent.llm('judge', [{'role': 'user', 'content': 'x'}])\n", "not 'judge'"),
        (
            "from pathlib import Path\nfrom inner.sdk.contract import render\n"
            "async def run(agent):\n    render(Path(__file__).parent / 'p.md', a=1)\n",
            "placeholder $b which was not provided",
        ),
        (
            "from inner.sdk.contract import Challenge\nasync def run(agent):\n"
            "    res = await agent.llm_json('challenger', [{'role': 'user', 'content': 'x'}], Challenge)\n"
            "    await agent.evaluate(res.value, side='sideways')\n",
            "side must be 'weak' or 'both'",
        ),
    ],
    ids=["raises", "os-exit", "syntax", "forbidden-role", "missing-placeholder", "bad-side"],
)
def test_dry_run_reports_what_went_wrong(tmp_path, code, needle):
    h = write_harness(tmp_path / "h", code)
    (h / "p.md").write_text("system $a\n=== USER ===\nuser $b\n")
    problem = dry(h)
    assert problem is not None and needle in problem


def test_dry_run_stops_a_harness_that_never_returns(tmp_path):
    h = write_harness(tmp_path / "h", "async def run(agent):\n    while True:\n        pass\n")
    problem = dry(h, timeout_s=3)
    assert problem is not None and "did not finish within 3 s" in problem


def test_dry_run_gives_canned_schema_replies_and_reports(tmp_path):
    """A harness that checks what the dry run hands it: schema-valid JSON, distinct replies,
    tool calls of the offered tools, TOO_EASY reports, and the round budget as BudgetExhausted."""
    code = """
import json
from inner.sdk.contract import Challenge, FailureMode
from inner.sdk.errors import BudgetExhausted

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object",
          "properties": {"x": {"type": "string"}}, "required": ["x"]}}} for n in ("a", "b")]

async def run(agent):
    msgs = [{"role": "user", "content": agent.document("challenger")}]
    first = await agent.llm_json("challenger", msgs, Challenge)
    second = await agent.llm_json("challenger", msgs, Challenge)
    assert first.ok and second.ok and first.value != second.value, (first, second)
    calls = [(await agent.llm("main_agent", msgs, tools=TOOLS)).tool_calls[0] for _ in range(2)]
    assert [c["function"]["name"] for c in calls] == ["a", "b"], calls
    assert "x" in json.loads(calls[0]["function"]["arguments"])
    report = await agent.evaluate(first.value, side="weak")
    assert report.failure_mode is FailureMode.TOO_EASY and agent.rounds == [report]
    await agent.evaluate(second.value)
    try:
        third = await agent.llm_json("challenger", msgs + msgs, Challenge)
        await agent.evaluate(third.value)
    except BudgetExhausted:
        raise SystemExit("budget as expected")
    raise AssertionError("no round budget")
"""
    problem = dry(write_harness(tmp_path / "h", code), max_rounds=2)
    assert problem is not None and "SystemExit: budget as expected" in problem


def test_schema_instance_satisfies_the_schemas_harnesses_ask_for():
    sys.path.insert(0, str(HARNESSES_DIR / "paper_baseline"))
    try:
        import harness as paper  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
        sys.modules.pop("harness", None)
    for model in (Challenge, paper.PaperChallenge, paper.SelfCheck, edit_plan_model(("harness.py", "prompts/a.md"))):
        value = schema_instance(model_schema(model), "t")
        model.model_validate(value)
    pc = paper.PaperChallenge.model_validate(schema_instance(model_schema(paper.PaperChallenge)))
    assert (len(pc.criteria), len(pc.pitfalls)) == (7, 3)
    assert json.dumps(schema_instance({"type": "integer", "minimum": 3, "maximum": 9})) == "3"


def test_check_prompt_files(tmp_path):
    h = tmp_path / "h"
    shutil.copytree(HARNESSES_DIR / "baseline", h)
    assert check_prompt_files(h) is None
    (h / "prompts" / "unused.md").write_text("no marker, $whatever")  # never rendered: still needs the marker
    assert "unused.md lacks the line '=== USER ==='" in (check_prompt_files(h) or "")
    (h / "prompts" / "unused.md").write_text("system $anything\n=== USER ===\nuser")  # not rendered: fine
    assert check_prompt_files(h) is None
    challenger = h / "prompts" / "challenger.md"
    challenger.write_text(challenger.read_text() + "\nCosts 5 $ per call.\n")
    assert "challenger.md has an invalid placeholder" in (check_prompt_files(h) or "")
    challenger.write_text(challenger.read_text().replace("5 $ per", "5 $$ per") + "$unknown_thing\n")
    assert check_prompt_files(h) == "prompts/challenger.md uses $unknown_thing, which no harness code passes"


class PaperMetaScenario(ConformanceScenario):
    """The conformance scenario (paper challenger schema, self-checks, judge over any ids) with
    the meta roles of :class:`~tests.test_meta.MetaScenario`: validation doc MARK-V1 accepted,
    the rest too easy."""

    def __init__(self, edits: list[str]) -> None:
        super().__init__({"*": [TOO_EASY], "MARK-V1": [ACCEPT]})
        self.edits = edits
        self.implementer_calls = 0

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        if role == "analyzer":
            return "Root cause: the advisor adds nothing; drop it."
        if role == "implementer":
            with self._lock:
                self.implementer_calls += 1
                return self.edits[min(self.implementer_calls, len(self.edits)) - 1]
        return super().__call__(role, body)


def test_evolve_starts_from_the_paper_baseline_under_the_published_policy(meta_corpus, server, tmp_path):
    edit = "FILE: harness.py\n<<<<<<< SEARCH\nUSE_ADVISOR = True\n=======\nUSE_ADVISOR = False\n>>>>>>> REPLACE\n"
    srv = server(PaperMetaScenario([edit]))
    cfg = evolve_config(meta_corpus, "meta.max_iterations=1", "meta.start_harness=paper_baseline", "rubric=published")
    summary = evolve(cfg, tmp_path / "run", srv)
    (h,) = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert h["parent_harness_id"].split("@")[1] == harness_content_hash(HARNESSES_DIR / "paper_baseline")
    assert summary["baseline_val_pass_rate"] == 0.5  # published rubrics with pitfalls pass the policy
    assert h["status"] == "rejected" and h["candidate_val"] == 0.5  # a code edit, evaluated, not better
    # the candidate's challenger requests still carried the published rubric schema
    assert all("pitfalls" in response_schema(b)["properties"] for r, b in srv.requests if r == "challenger")


def test_demo_experiment_composes_with_the_paper_baseline():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from inner.engine.harness import resolve_harness_dir
    from meta.config import EvolveConfig, register_configs
    from tests.conftest import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = compose(config_name="evolve", overrides=["+experiment=demo", "meta.start_harness=paper_baseline"])
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, EvolveConfig) and cfg.meta.max_iterations == 2
    assert resolve_harness_dir(cfg.meta.start_harness) == (HARNESSES_DIR / "paper_baseline").resolve()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        paper = OmegaConf.to_object(compose(config_name="evolve", overrides=["+experiment=autodata_paper"]))
    assert paper.meta.start_harness == "paper_baseline" and paper.rubric.name == "published"  # type: ignore[union-attr]
