"""Harness conformance: any harness runs end to end, sealed, against the scripted server and
leaves the records a user relies on. Parametrized over the shipped harnesses (add yours to
``HARNESSES`` with the config overrides it needs, e.g. its rubric policy).

Per harness, three documents under one scripted evaluator: MARK-A is accepted on its first
round, MARK-B is too easy once and then accepted, MARK-C is too easy every round. The test
asserts the statuses, the rounds and failure modes, the dataset lines, the rubric policy of
every evaluated challenge, the roles the harness used, and no crash or error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from inner.config import HARNESS_ROLES
from inner.engine.harness import HARNESSES_DIR
from inner.engine.records import RunWriter
from inner.evaluator.scoring import check_rubric_policy
from tests.conftest import run
from tests.helpers.conformance import ACCEPT, TOO_EASY, ConformanceScenario, response_schema
from tests.scenario import MARK, RoundPlan, Scenario

#: harness name -> config overrides it is run with
HARNESSES: dict[str, list[str]] = {
    "baseline": [],
    "paper_baseline": ["rubric=published"],
    "orchestrator": [],
}


#: the paper baseline on one document, one round, one weak and one strong attempt
PAPER_ONE_ROUND = (
    "harness=paper_baseline",
    "rubric=published",
    "inner.max_rounds=1",
    "task.limit=1",
    "inner.n_weak=1",
    "inner.n_strong=1",
)


def conformance_plans() -> dict[str, list[RoundPlan]]:
    return {"*": [TOO_EASY], "MARK-A": [ACCEPT], "MARK-B": [TOO_EASY, ACCEPT]}


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_conforms(name, make_cfg, server, tmp_path):
    assert (HARNESSES_DIR / name / "harness.py").is_file()
    scen = ConformanceScenario(conformance_plans())
    srv = server(scen)
    cfg = make_cfg(f"harness={name}", "inner.max_rounds=2", "inner.n_weak=1", "inner.n_strong=1", *HARNESSES[name])
    stats = run(cfg, tmp_path / "run", srv)
    assert stats["crashed"] == 0 and stats["errored"] == 0 and stats["finished"] == 3
    assert stats["accepted"] == 2 and stats["pass_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["harness_id"].startswith(f"{name}@")

    writer = RunWriter(tmp_path / "run")
    trajs = {MARK.search(t.title).group(0): t for t in writer.load_trajectories()}  # type: ignore[union-attr]
    assert {m: t.status for m, t in trajs.items()} == {
        "MARK-A": "accepted",
        "MARK-B": "accepted",
        "MARK-C": "exhausted",
    }
    assert [r.failure_mode.value for r in trajs["MARK-A"].rounds] == ["ACCEPTED"]
    assert [r.failure_mode.value for r in trajs["MARK-B"].rounds] == ["TOO_EASY", "ACCEPTED"]
    assert [r.failure_mode.value for r in trajs["MARK-C"].rounds] == ["TOO_EASY", "TOO_EASY"]
    for t in trajs.values():
        assert t.harness_error is None and t.error is None
        assert set(t.harness_usage) <= set(HARNESS_ROLES) and "challenger" in t.harness_usage
        assert {e.role for e in t.events if e.kind == "llm"} <= set(HARNESS_ROLES)
        for r in t.rounds:  # every evaluated challenge honours the run's rubric policy
            assert r.challenge is not None and check_rubric_policy(r.challenge.rubric, cfg.rubric) is None

    examples = writer.load_examples()
    assert sorted(e.doc_id for e in examples) == sorted(trajs[m].doc_id for m in ("MARK-A", "MARK-B"))
    for e in examples:
        assert e.harness_id == stats["harness_id"] and e.weak_scores == [0.5] and e.strong_scores == [0.9]
        assert e.gap == pytest.approx(0.4)
    lines = (tmp_path / "run" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["question"].startswith("QMARK-") for x in lines)


def test_paper_baseline_writes_the_published_rubric_and_self_checks(make_cfg, server, tmp_path):
    srv = server(ConformanceScenario({"*": [ACCEPT]}))
    run(make_cfg(*PAPER_ONE_ROUND), tmp_path / "run", srv)
    # the schema sent to the challenger enforces the rubric shape (grammar-constrained models comply)
    body = next(b for r, b in srv.requests if r == "challenger")
    props = response_schema(body)["properties"]
    assert list(props)[0] == "scratchpad"
    assert (props["criteria"]["minItems"], props["criteria"]["maxItems"]) == (7, 10)
    assert (props["pitfalls"]["minItems"], props["pitfalls"]["maxItems"]) == (3, 5)
    weight = props["criteria"]["items"]["properties"]["weight"]
    assert (weight["minimum"], weight["maximum"]) == (1, 10)
    (ex,) = RunWriter(tmp_path / "run").load_examples()
    weights = [c.weight for c in ex.rubric]
    assert len(weights) == 13 and sum(w < 0 for w in weights) == 3 and all(-10 <= w <= 10 and w for w in weights)
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    assert traj.rounds[0].self_check is not None and traj.rounds[0].self_check.passed
    assert srv.count("self_check") == 1


def test_paper_baseline_regenerates_a_draft_its_self_check_rejects(make_cfg, server, tmp_path):
    srv = server(ConformanceScenario({"*": [ACCEPT]}, self_check_passes=False))
    run(make_cfg(*PAPER_ONE_ROUND), tmp_path / "run", srv)
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    # MAX_REGENERATIONS=2 drafts are regenerated, the third is evaluated anyway with its verdict
    assert srv.count("challenger") == 3 and srv.count("self_check") == 3
    assert len(traj.rounds) == 1 and traj.rounds[0].self_check is not None
    assert not traj.rounds[0].self_check.passed and "generic" in traj.rounds[0].self_check.reason
    assert traj.status == "accepted"  # the frozen check decides, not the harness's own
    prompts = [b["messages"][1]["content"] for r, b in srv.requests if r == "challenger"]
    assert "failed the quality check" in prompts[1] and "failed the quality check" not in prompts[0]


def test_rubric_policy_is_enforced_for_a_harness_written_for_another(make_cfg, server, tmp_path):
    """The baseline's 10 positive criteria break the published policy (no pitfalls): every
    round is INVALID_CHALLENGE, no solver is called."""
    srv = server(ConformanceScenario({"*": [ACCEPT]}))
    cfg = make_cfg("harness=baseline", "rubric=published", "inner.max_rounds=1", "task.limit=1")
    stats = run(cfg, tmp_path / "run", srv)
    assert stats["failure_modes"] == {"INVALID_CHALLENGE": 1}
    assert srv.count("weak_solver") == 0


def _run_exact(make_cfg, server, tmp_path, sentence: str) -> tuple[Any, dict[str, Any]]:
    """The embedded profile on one document stating ``mixed_5b`` in ``sentence``; the scripted
    weak solver answers ``conv_1``, the strong one ``mixed_5b``."""
    corpus = tmp_path / "exact-corpus"
    corpus.mkdir()
    (corpus / "doc-mark-a.txt").write_text(
        f"Title: Paper MARK-A\n\nThis paper (MARK-A) studies weight banding.\n\n{sentence}\n"
    )
    plan = RoundPlan(weak_answers=["conv_1"] * 4, strong_answers=["mixed_5b"] * 4)
    srv = server(Scenario({"*": [plan]}))
    cfg = make_cfg(f"task.corpus={corpus}", "+experiment=embedded_exact", "inner.max_rounds=2")
    return srv, run(cfg, tmp_path / "run", srv)


def test_embedded_exact_is_accepted_on_the_verifiable_path(make_cfg, server, tmp_path):
    """The embedded profile's harness (issue 11): the exact term comes from the document, the
    question is its sentence with the term blanked out; the frozen verifiable gate decides
    (weak 0 of 4, strong 4 of 4 equivalent to the reference)."""
    # the cloze question is this sentence with the term blanked; the scripted server reads its
    # round from the "QMARK-A r1" tag in it
    sentence = "The banding is most visible in layer mixed_5b of the network (QMARK-A r1), where it dominates."
    srv, stats = _run_exact(make_cfg, server, tmp_path, sentence)
    assert stats["accepted"] == 1 and stats["crashed"] == 0
    (ex,) = RunWriter(tmp_path / "run").load_examples()
    assert ex.verifiable and ex.reference_answer == "mixed_5b"
    assert ex.weak_scores == [0.0] * 4 and ex.strong_scores == [1.0] * 4
    assert "mixed_5b" not in ex.question and "____" in ex.question and srv.count("judge") == 0
    assert srv.count("challenger") == 0  # the sentence has a fill-in-the-blank form: no phrasing call


def test_embedded_exact_candidates_and_question_forms():
    """The embedded profile's harness picks exact terms the document states (identifiers,
    measured values, names inside a sentence; not an acronym the document spells out, whose
    expansion would be an equally right answer) and asks the fill-in-the-blank form."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("embedded_exact_h", HARNESSES_DIR / "embedded_exact" / "harness.py")
    h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h)  # type: ignore[union-attr]
    text = (
        "Title: A Study\n\n"
        "We train graph neural networks (GNNs) on molecules from a public benchmark dataset here.\n\n"
        "The GNNs reach an accuracy of 96.3% on the held-out split of that dataset overall.\n\n"
        "The language models were trained on the Penn Treebank corpus for many epochs before testing.\n\n"
        "The banding is most visible in layer mixed_5b of the network, where it dominates.\n"
    )
    terms = [t for t, _, _ in h.candidates(text, "A Study")]
    assert terms == ["mixed_5b", "96.3%", "Penn Treebank"]  # identifiers, then values, then names; no GNNs
    term, sentence, _ = h.candidates(text, "A Study")[1]
    q = h.cloze(term, sentence)
    assert q is not None and "____" in q.question and "96.3" not in q.question and q.reference_answer == "96.3%"


def test_embedded_exact_asks_the_challenger_when_the_term_has_no_blank_form(make_cfg, server, tmp_path):
    """A term that occurs twice in its sentence has no one-answer blank: the challenger phrases
    the question (the scripted one), and the frozen gate decides as before."""
    sentence = "The banding of layer mixed_5b is visible because mixed_5b sits in the network, where it dominates."
    srv, stats = _run_exact(make_cfg, server, tmp_path, sentence)
    assert stats["accepted"] == 1 and srv.count("challenger") == 1
    (ex,) = RunWriter(tmp_path / "run").load_examples()
    assert ex.reference_answer == "mixed_5b" and ex.question.startswith("QMARK-A r1")


def test_computed_exact_asks_for_a_computed_answer_and_both_solvers_read_the_passage(make_cfg, server, tmp_path):
    """The ladder's open-book-both setting (``+experiment=ladder_open_book``, issue 17) with the
    computed_exact harness: a proposal whose answer the passage states is not asked (a copied
    answer separates no models); a computed one is, both solvers get the passage, and the
    frozen verifiable gate decides (weak 0 of 4, strong 4 of 4 equivalent)."""
    import asyncio

    from inner.engine.run import run_generate

    corpus = tmp_path / "math-corpus"
    corpus.mkdir()
    (corpus / "doc-mark-a.txt").write_text(
        "Title: Paper MARK-A\n\nThis paper (MARK-A) studies sums.\n\nThe total weight is 1234 units in all.\n"
    )
    copied = {"context": "The article states a weight.", "question": "QMARK-A r1 What is it?", "answer": "1234"}
    computed = {"context": "Take 6 groups of 7 units.", "question": "QMARK-A r2 How many units?", "answer": "42"}
    plans = [
        RoundPlan(challenge=copied),
        RoundPlan(challenge=computed, weak_answers=["41"] * 4, strong_answers=["42.0"] * 4),
    ]
    srv = server(Scenario({"*": plans}))
    cfg = make_cfg(f"task.corpus={corpus}", "+experiment=ladder_open_book", "inner.max_rounds=2")
    assert cfg.harness == "computed_exact" and cfg.inner.weak_open_book and cfg.task.verifiable == "always"
    urls = {"default": srv.base_url, "large": srv.base_url}
    stats = asyncio.run(run_generate(cfg, tmp_path / "run", base_urls=urls))
    assert stats["accepted"] == 1 and stats["crashed"] == 0 and srv.count("challenger") == 2
    (t,) = RunWriter(tmp_path / "run").load_trajectories()
    assert [e.text for e in t.events if e.kind == "note"] == [
        "proposal not used: the answer is written in the passage (it must be computed)"
    ]
    (ex,) = RunWriter(tmp_path / "run").load_examples()
    assert ex.verifiable and ex.reference_answer == "42" and ex.question_type == "computed"
    assert ex.weak_scores == [0.0] * 4 and ex.strong_scores == [1.0] * 4  # 42.0 == 42 by math-verify
    solver_prompts = [b["messages"][-1]["content"] for r, b in srv.requests if r.endswith("_solver")]
    assert len(solver_prompts) == 8 and all("1234 units" in p for p in solver_prompts)  # open-book both
