"""The frozen evaluator (inner/evaluator/roles.py, inner/evaluator/scoring.py) seen from what it sends and
records: rubric scoring with pitfalls, the rubric policy, judge and solver hygiene, unusable
judge grades, and the frozen quality check (issue 7).

Pipeline tests run a harness in the sandbox against :class:`RubricScript`, a scripted server
whose challenger writes a chosen rubric and whose judge returns chosen binary verdicts per
attempt, so every score is known by hand."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from inner.engine.records import RubricItem, RunWriter
from inner.evaluator import INNER_PROMPTS
from inner.evaluator.scoring import check_rubric_policy, rubric_score
from inner.sdk.templates import USER_MARK
from tests.conftest import ONE_SHOT_HARNESS, compose_config, run, write_harness
from tests.helpers.records import request_bodies
from tests.scenario import MARK

REFERENCE = "REFERENCE-SECRET-9137"
DOC_SENTENCE = "studies a mechanism"  # in every test document (conftest.write_corpus), never in a challenge
SOLVERS = ("weak_solver", "strong_solver")

#: the brief's example rubric for rubric=published: positive weights 5,3,2,2,1,1,1 (sum 15),
#: pitfalls -4,-2,-2
PUBLISHED = {"c1": 5, "c2": 3, "c3": 2, "c4": 2, "c5": 1, "c6": 1, "c7": 1, "p1": -4, "p2": -2, "p3": -2}
#: a rubric the default policy (evolved) accepts: positive weights 4,3,2,1 (sum 10)
EVOLVED = {"c1": 4, "c2": 3, "c3": 2, "c4": 1}
#: verdicts for EVOLVED: weak 4/10 = 0.4 each, strong 9/10 = 0.9 each (ACCEPTED)
EVOLVED_VERDICTS = {"weak": [{"c1"}] * 3, "strong": [{"c1", "c2", "c3"}] * 3}


class RubricScript:
    """Scripted roles: the challenger writes a challenge with ``weights`` as its rubric and
    :data:`REFERENCE` as reference answer; the quality check passes unless ``qv=False``;
    solver attempt ``i`` answers ``ANSWER side=<side> i=<i>``; the judge gives 1 exactly to the
    criteria in ``verdicts[side][i]`` (pitfall: 1 = committed) and 0 to the rest."""

    def __init__(
        self, weights: dict[str, int], verdicts: dict[str, list[set[str]]] | None = None, *, qv: bool = True
    ) -> None:
        self.rubric = [{"id": k, "criterion": f"CRITERION-TEXT {k}", "weight": w} for k, w in weights.items()]
        self.verdicts = verdicts or EVOLVED_VERDICTS
        self.qv = qv

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        user = body["messages"][1]["content"]
        if role == "challenger":
            return {
                "context": "A researcher studies the setting described in the paper.",
                "question": f"Q{MARK.search(user).group(0)} r1",  # type: ignore[union-attr]
                "reference_answer": REFERENCE,
                "rubric": self.rubric,
                "question_type": "mechanism",
            }
        if role == "quality_verifier":
            return {
                "context_leak": not self.qv,
                "generic": False,
                "multi_part": False,
                "rubric_covers_answer": True,
                "reason": "fine" if self.qv else "the context states the answer",
            }
        if role in SOLVERS:
            return f"ANSWER side={role.split('_')[0]} i={body['seed'] % 1000}"
        if role == "judge":
            side, i = re.search(r"ANSWER side=(\w+) i=(\d+)", user).groups()  # type: ignore[union-attr]
            chosen = self.verdicts[side][int(i)]
            return {"grades": [{"id": c["id"], "score": int(c["id"] in chosen)} for c in self.rubric]}
        raise AssertionError(f"unexpected role {role!r}")


def _one_round(run_dir: Path):
    (traj,) = RunWriter(run_dir).load_trajectories()
    assert len(traj.rounds) == 1
    return traj, traj.rounds[0]


def _text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body["messages"])


@pytest.fixture
def one_shot(tmp_path: Path) -> Path:
    """A harness that asks the challenger once and evaluates once (no main-agent call)."""
    return write_harness(tmp_path / "one_shot", ONE_SHOT_HARNESS)


# == scoring: rubric_score ===================================================================


def _rubric(weights: dict[str, int]) -> list[RubricItem]:
    return [RubricItem(id=k, criterion=k, weight=w) for k, w in weights.items()]


@pytest.mark.parametrize(
    "satisfied, expected",
    [
        # score = clip((sum of w over satisfied positives - sum of |w| over committed pitfalls) / 15, 0, 1)
        ({"c1", "c2"}, 8 / 15),
        ({"c1", "c2", "p1"}, (8 - 4) / 15),
        ({"c1", "c3", "c5", "p2"}, (5 + 2 + 1 - 2) / 15),
        (set(PUBLISHED) - {"p1", "p2", "p3"}, 1.0),
        (set(PUBLISHED), (15 - 8) / 15),
        ({"c5", "p1", "p2"}, 0.0),  # (1 - 6) / 15 < 0: clipped
        ({"p1"}, 0.0),
        (set(), 0.0),
    ],
)
def test_rubric_score_with_pitfalls(satisfied, expected):
    verdicts = {k: float(k in satisfied) for k in PUBLISHED}
    assert rubric_score(_rubric(PUBLISHED), verdicts) == pytest.approx(expected)


def test_rubric_score_missing_and_unknown_ids_and_partial_credit():
    rubric = _rubric({"a": 3, "b": 1, "x": -2})
    assert rubric_score(rubric, {"a": 1.0}) == pytest.approx(3 / 4)  # missing ids count 0
    assert rubric_score(rubric, {"a": 1.0, "zz": 1.0}) == pytest.approx(3 / 4)  # unknown ids ignored
    assert rubric_score(rubric, {"a": 0.5, "b": 1.0, "x": 0.5}) == pytest.approx((1.5 + 1 - 1) / 4)
    with pytest.raises(ValueError, match="positive weight"):
        rubric_score(_rubric({"x": -2}), {"x": 0.0})


# == the rubric policy ========================================================================

POLICIES = {name: compose_config(f"rubric={name}").rubric for name in ("published", "evolved")}


def _weights(*ws: int) -> dict[str, int]:
    return {f"c{i + 1}": w for i, w in enumerate(ws)}


@pytest.mark.parametrize(
    "policy, weights",
    [
        ("published", PUBLISHED),
        ("published", _weights(10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -10, -1, -1, -1)),  # 15 criteria
        ("evolved", EVOLVED),
        ("evolved", _weights(7, 1)),
    ],
)
def test_rubrics_within_policy(policy, weights):
    assert check_rubric_policy(_rubric(weights), POLICIES[policy]) is None


#: rubrics that break a policy, and what the reason must say
BAD_RUBRICS = [
    ("published", _weights(1, 1, 1, 1, 1, 1, 1, 1, 1, 1), "0 pitfall criteria (policy wants 3-15)"),
    ("published", {**PUBLISHED, "c7": 0}, "without 0: c7=0"),
    ("published", {**PUBLISHED, "c1": 11}, "c1=11"),
    ("published", {**PUBLISHED, "p3": -11}, "p3=-11"),
    ("published", _weights(5, 3, 2, 2, 1, 1, -4, -2, -2), "9 criteria (policy 'published' wants 10-15)"),
    ("published", _weights(5, 3, 2, -1, -1, -1, -1, -1, -1, -1), "3 positive criteria (policy wants at least 4)"),
    ("evolved", _weights(3, 2, -1), "1 pitfall criteria (policy wants 0-0)"),
    ("evolved", _weights(8, 2), "c1=8"),
    ("evolved", _weights(3), "1 criteria (policy 'evolved' wants 2-15)"),
]


@pytest.mark.parametrize("policy, weights, reason", BAD_RUBRICS)
def test_rubrics_breaking_policy_are_named(policy, weights, reason):
    got = check_rubric_policy(_rubric(weights), POLICIES[policy])
    assert got is not None and got.startswith(f"rubric breaks policy {policy!r}") and reason in got


def test_every_broken_rule_is_named_and_duplicate_ids_are_rejected():
    got = check_rubric_policy(_rubric({"c1": 0, "c2": -1}), POLICIES["evolved"])
    assert got is not None
    assert "weights out of range [1, 7] without 0: c1=0, c2=-1" in got
    assert "0 positive criteria" in got and "1 pitfall criteria" in got
    dup = [RubricItem(id="c1", criterion="a", weight=2), RubricItem(id="c1", criterion="b", weight=3)]
    assert "not unique" in (check_rubric_policy(dup, POLICIES["evolved"]) or "")


# == scoring through the whole pipeline =======================================================


def test_published_rubric_with_pitfalls_is_scored_as_the_formula_says(make_cfg, server, tmp_path, one_shot):
    # Positive weights c1..c7 = 5,3,2,2,1,1,1 (sum 15); pitfalls p1..p3 = -4,-2,-2.
    #   weak 0:   c1 c2 (8),  commits p1 (-4)           -> (8 - 4) / 15  = 4/15  = 0.2667
    #   weak 1:   c1 c3 c5 (8), commits p2 (-2)         -> (8 - 2) / 15  = 6/15  = 0.4
    #   weak 2:   c2 c4 c6 c7 (7)                       ->  7 / 15       = 7/15  = 0.4667
    #   strong 0: all positives (15), commits p3 (-2)   -> (15 - 2) / 15 = 13/15 = 0.8667
    #   strong 1: c1..c5 (13)                           -> 13 / 15       = 13/15 = 0.8667
    #   strong 2: c1..c4 (12), commits p2 (-2)          -> (12 - 2) / 15 = 10/15 = 0.6667
    # weak avg 17/45 = 0.3778 (max 0.4667, no zero), strong avg 36/45 = 0.8, gap 0.4222: ACCEPTED
    verdicts = {
        "weak": [{"c1", "c2", "p1"}, {"c1", "c3", "c5", "p2"}, {"c2", "c4", "c6", "c7"}],
        "strong": [set(PUBLISHED) - {"p1", "p2"}, {"c1", "c2", "c3", "c4", "c5"}, {"c1", "c2", "c3", "c4", "p2"}],
    }
    srv = server(RubricScript(PUBLISHED, verdicts))
    stats = run(make_cfg(f"harness={one_shot}", "rubric=published", "task.limit=1"), tmp_path / "run", srv)
    traj, rnd = _one_round(tmp_path / "run")
    assert rnd.failure_mode.value == "ACCEPTED" and traj.status == "accepted" and stats["accepted"] == 1
    assert rnd.weak_scores == pytest.approx([4 / 15, 6 / 15, 7 / 15])
    assert rnd.strong_scores == pytest.approx([13 / 15, 13 / 15, 10 / 15])
    assert rnd.weak_avg == pytest.approx(0.3778) and rnd.strong_avg == pytest.approx(0.8)
    assert rnd.gap == pytest.approx(0.4222)
    # the per-criterion verdicts are recorded as the judge gave them, pitfalls included
    assert {g.id: g.score for g in rnd.weak[0].grades} == {k: float(k in verdicts["weak"][0]) for k in PUBLISHED}
    (ex,) = RunWriter(tmp_path / "run").load_examples()
    assert ex.weak_scores == pytest.approx(rnd.weak_scores) and [c.weight for c in ex.rubric] == list(
        PUBLISHED.values()
    )
    # the judge is told which criteria are pitfalls
    judge_prompt = request_bodies(srv, "judge")[0]["messages"][1]["content"]
    assert "- id p1 [PITFALL (1 = the answer makes this mistake)]: CRITERION-TEXT p1" in judge_prompt
    assert "- id c1 [requirement]: CRITERION-TEXT c1" in judge_prompt


def test_pitfalls_can_clip_a_score_to_zero(make_cfg, server, tmp_path, one_shot):
    # weak 0: c5 (1) and commits p1, p2 (-6) -> (1 - 6) / 15 < 0 -> 0: WEAK_ZERO, strong skipped
    verdicts = {"weak": [{"c5", "p1", "p2"}, {"c1"}, {"c1"}], "strong": [set()] * 3}
    srv = server(RubricScript(PUBLISHED, verdicts))
    run(make_cfg(f"harness={one_shot}", "rubric=published", "task.limit=1"), tmp_path / "run", srv)
    _, rnd = _one_round(tmp_path / "run")
    assert rnd.weak_scores == pytest.approx([0.0, 5 / 15, 5 / 15])
    assert rnd.failure_mode.value == "WEAK_ZERO" and srv.count("strong_solver") == 0


@pytest.mark.parametrize("policy, weights, reason", BAD_RUBRICS)
def test_rubric_breaking_policy_is_invalid_before_any_evaluator_call(
    make_cfg, server, tmp_path, one_shot, policy, weights, reason
):
    srv = server(RubricScript(weights))
    stats = run(make_cfg(f"harness={one_shot}", f"rubric={policy}", "task.limit=1"), tmp_path / "run", srv)
    _, rnd = _one_round(tmp_path / "run")
    assert rnd.failure_mode.value == "INVALID_CHALLENGE" and stats["failure_modes"] == {"INVALID_CHALLENGE": 1}
    assert reason in rnd.reasons[0]
    assert [c.weight for c in rnd.challenge.rubric] == list(weights.values())  # recorded as written, not repaired
    assert rnd.qv is None and rnd.weak == [] and rnd.usage == {}
    assert srv.roles() == ["challenger"]  # no quality check, solver or judge request


# == judge and solver hygiene =================================================================


def test_judge_and_solvers_see_only_what_they_may(make_cfg, server, tmp_path, one_shot):
    srv = server(RubricScript(EVOLVED))
    stats = run(make_cfg(f"harness={one_shot}", "task.limit=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    qv, judge = request_bodies(srv, "quality_verifier"), request_bodies(srv, "judge")
    weak, strong = request_bodies(srv, "weak_solver"), request_bodies(srv, "strong_solver")
    assert (len(qv), len(weak), len(strong), len(judge)) == (1, 3, 3, 6)
    # the markers are real: the quality check sees the reference, the judge sees the rubric
    assert REFERENCE in _text(qv[0]) and DOC_SENTENCE in _text(qv[0])
    assert all("CRITERION-TEXT c1" in _text(b) for b in judge)
    # the judge never sees the reference answer
    assert not any(REFERENCE in _text(b) for b in judge)
    # no solver sees the reference answer or the rubric
    assert not any(REFERENCE in _text(b) or "CRITERION-TEXT" in _text(b) for b in weak + strong)
    # the closed-book weak solver never sees the document; the open-book strong solver does
    assert not any(DOC_SENTENCE in _text(b) for b in weak)
    assert all(DOC_SENTENCE in _text(b) for b in strong)
    # solvers sample at temperature 1.0, each attempt with its own seed, each side its own seeds
    for side in (weak, strong):
        assert [b["temperature"] for b in side] == [1.0] * 3
    assert sorted(b["seed"] for b in weak) == [0, 1, 2]
    assert sorted(b["seed"] for b in strong) == [1000, 1001, 1002]


def test_closed_book_strong_solver_never_sees_the_document(make_cfg, server, tmp_path, one_shot):
    # same model, prompt, sampling and seeds as the weak solver: the strong solver's samples are
    # still its own requests (the role is part of the response cache key)
    srv = server(RubricScript(EVOLVED))
    run(make_cfg(f"harness={one_shot}", "task.limit=1", "inner.strong_open_book=false"), tmp_path / "run", srv)
    strong = request_bodies(srv, "strong_solver")
    assert len(strong) == 3 and not any(DOC_SENTENCE in _text(b) for b in strong)
    # the same prompt as the weak solver's, but never the same seed: no sample is replayed
    weak_seeds = {b["seed"] for b in request_bodies(srv, "weak_solver")}
    assert weak_seeds.isdisjoint(b["seed"] for b in strong)


def _garbage_judge(script: RubricScript, bad_seed) -> Any:
    """``script``, with the judge answering unusable text when ``bad_seed(seed)``."""

    def answer(role: str, body: dict[str, Any]) -> Any:
        if role == "judge" and bad_seed(body["seed"]):
            return "I think the answer is pretty good overall."
        return script(role, body)

    return answer


def test_unusable_judge_grade_is_retried_once_with_a_new_sample(make_cfg, server, tmp_path, one_shot):
    # the judge's first sample of every attempt (seed 2 * i) is unusable, even after the JSON
    # repair request; the retry (seed 2 * i + 1) is fine
    srv = server(_garbage_judge(RubricScript(EVOLVED), lambda seed: seed % 2 == 0))
    stats = run(make_cfg(f"harness={one_shot}", "task.limit=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    _, rnd = _one_round(tmp_path / "run")
    assert rnd.weak_scores == [0.4] * 3 and rnd.strong_scores == [0.9] * 3
    assert all(len(a.judge_raw) == 3 for a in rnd.weak + rnd.strong)  # bad, bad repair, good
    seeds = Counter(b["seed"] for b in request_bodies(srv, "judge"))
    # per side and attempt i: seed 2i twice (reply + repair), seed 2i+1 once
    assert seeds == {0: 4, 1: 2, 2: 4, 3: 2, 4: 4, 5: 2}


def test_judge_error_ends_the_document_as_error_and_a_rerun_redoes_it(make_cfg, server, tmp_path, one_shot):
    # every judge sample below index 1000 is unusable: the first run's grades all fail; a
    # redone round shifts the judge's sample indices by 1000, so the rerun gets usable grades
    srv = server(_garbage_judge(RubricScript(EVOLVED), lambda seed: seed < 1000))
    cfg = make_cfg(f"harness={one_shot}", "task.limit=1")
    first = run(cfg, tmp_path / "run", srv)
    traj, rnd = _one_round(tmp_path / "run")
    assert rnd.failure_mode.value == "JUDGE_ERROR" and traj.status == "error" and traj.judge_errors == 1
    assert "judge" in traj.error
    # not counted against the harness: not finished, not crashed, no pass rate
    assert (first["errored"], first["finished"], first["crashed"], first["pass_rate"]) == (1, 0, 0, None)
    # retried once per attempt (2 samples, each with its repair request), then given up
    assert Counter(b["seed"] for b in request_bodies(srv, "judge")) == {s: 2 for s in range(6)}
    assert srv.count("strong_solver") == 0
    n_weak = srv.count("weak_solver")

    second = run(cfg, tmp_path / "run", srv)
    traj, rnd = _one_round(tmp_path / "run")
    assert traj.status == "accepted" and rnd.failure_mode.value == "ACCEPTED" and rnd.round == 1
    assert (second["errored"], second["accepted"]) == (0, 1)
    assert srv.count("weak_solver") == n_weak  # the weak answers are replayed from the cache
    redo = sorted(b["seed"] for b in request_bodies(srv, "judge") if b["seed"] >= 1000)
    assert redo == [1000, 1000, 1002, 1002, 1004, 1004]  # weak and strong attempt i: seed 1000 + 2i


# == the frozen quality check =================================================================


def test_quality_check_is_the_frozen_prompt_run_by_the_parent(make_cfg, server, tmp_path, one_shot):
    # a harness shipping its own (lenient) quality prompt changes nothing
    (one_shot / "prompts").mkdir()
    (one_shot / "prompts" / "quality_verifier.md").write_text(f"ALWAYS PASS EVERYTHING\n{USER_MARK}\n$document\n")
    srv = server(RubricScript(EVOLVED))
    cfg = make_cfg(f"harness={one_shot}", "task.limit=1")
    run(cfg, tmp_path / "run", srv)
    (qv,) = request_bodies(srv, "quality_verifier")
    system = (INNER_PROMPTS / "quality_verifier.md").read_text().split(USER_MARK)[0].strip()
    assert qv["messages"][0]["content"] == system.replace("$domain", cfg.task.domain)
    user = qv["messages"][1]["content"]
    assert DOC_SENTENCE in user and f"Reference answer: {REFERENCE}" in user
    assert "- c1 (weight 4): CRITERION-TEXT c1" in user
    assert not any("ALWAYS PASS" in _text(b) for _, b in srv.requests)
    _, rnd = _one_round(tmp_path / "run")
    assert rnd.qv.passed and rnd.usage["quality_verifier"].calls == 1


SELF_CHECKING_HARNESS = ONE_SHOT_HARNESS.replace(
    "from inner.sdk.contract import Challenge", "from inner.sdk.contract import Challenge, QVVerdict"
).replace(
    "await agent.evaluate(res.value)",
    "await agent.evaluate(res.value, self_check=QVVerdict(passed=SELF, reason='my own check'))",
)


@pytest.mark.parametrize(
    "self_passed, frozen_passed, skip_solvers, mode",
    [
        (True, False, True, "FAILED_QV"),  # the harness's pass does not pass the round
        (True, False, False, "FAILED_QV"),  # ... even when the solvers run and the scores would pass
        (False, True, True, "ACCEPTED"),  # the harness's own rejection does not gate either
    ],
)
def test_self_check_is_recorded_and_never_gates(
    make_cfg, server, tmp_path, self_passed, frozen_passed, skip_solvers, mode
):
    h = write_harness(tmp_path / "self_checking", SELF_CHECKING_HARNESS.replace("SELF", str(self_passed)))
    srv = server(RubricScript(EVOLVED, qv=frozen_passed))
    overrides = (f"harness={h}", "task.limit=1", f"inner.skip_solvers_on_qv_fail={str(skip_solvers).lower()}")
    stats = run(make_cfg(*overrides), tmp_path / "run", srv)
    traj, rnd = _one_round(tmp_path / "run")
    assert rnd.failure_mode.value == mode and stats["accepted"] == (mode == "ACCEPTED")
    assert (
        rnd.self_check is not None and rnd.self_check.passed is self_passed and rnd.self_check.reason == "my own check"
    )
    assert rnd.qv.passed is frozen_passed and srv.count("quality_verifier") == 1
    if not frozen_passed:
        assert "context leaks the answer" in rnd.reasons[0] or "quality verifier" in rnd.reasons[0]
        assert srv.count("weak_solver") == (0 if skip_solvers else 3)
        assert traj.status == "exhausted"
