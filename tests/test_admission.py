"""meta.admission: the sign-flip test, the strict and paired rules, and the decide() procedure."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random

import pytest

from meta.admission import (
    AdmissionConfig,
    AdmissionDecision,
    DocTally,
    Tallies,
    bootstrap_ci,
    decide,
    noise_floor,
    paired_decision,
    paired_differences,
    sign_flip_pvalue,
    strict_decision,
)


def brute_force_pvalue(diffs: list[float]) -> float:
    """P(sum of sign-flipped diffs >= observed sum), every sign pattern enumerated."""
    obs = sum(diffs)
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(diffs)):
        total += 1
        hits += sum(s * abs(d) for s, d in zip(signs, diffs, strict=True)) >= obs - 1e-9
    return hits / total


def tallies(rows: dict[str, tuple[int, int]]) -> Tallies:
    return Tallies(rows)


# -- sign-flip p-value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([1, 1, 1], 1 / 8),  # only all-plus reaches 3
        ([1, -1], 0.75),  # sums 2, 0, 0, -2; observed 0
        ([2, -1], 0.5),  # sums 3, 1, -1, -3; observed 1
        ([3, -1, 2], 0.25),  # observed 4: patterns 6 and 4 of 8
        ([0.5, 0.5, 1.0], 1 / 8),
        ([1, 1, 1, 1], 1 / 16),
    ],
)
def test_exact_pvalue_hand_computed(diffs: list[float], expected: float) -> None:
    assert sign_flip_pvalue(diffs) == pytest.approx(expected, abs=1e-12)


def test_zeros_drop_out_and_no_signal_is_one() -> None:
    assert sign_flip_pvalue([0, 0, 1, 0, 1, 1, 0]) == pytest.approx(1 / 8)
    assert sign_flip_pvalue([]) == 1.0
    assert sign_flip_pvalue([0.0, 0.0, 0.0]) == 1.0


def test_tally_fractions_tie_despite_float_error() -> None:
    # 2/3 - 1/3 and 1/3 differ in the last bit; the observed sum 1.0 must still count as the maximum.
    diffs = [1 / 3, 2 / 3 - 1 / 3, 1 / 3]
    assert sign_flip_pvalue(diffs) == pytest.approx(1 / 8)


def test_exact_matches_brute_force_on_random_small_cases() -> None:
    rnd = random.Random(3)
    for _ in range(40):
        n = rnd.randint(1, 10)
        diffs = [
            rnd.choice([-1, -2 / 3, -1 / 2, -1 / 3, 0, 1 / 3, 1 / 2, 2 / 3, 1, rnd.uniform(-1, 1)]) for _ in range(n)
        ]
        assert sign_flip_pvalue(diffs) == pytest.approx(brute_force_pvalue(diffs), abs=1e-9), diffs


def test_exact_for_many_documents_with_few_magnitudes() -> None:
    # 20 equal magnitudes, 14 positive: the flipped sum is 0.5 * (2j - 20), j ~ Binomial(20, 1/2);
    # observed 4 -> p = P(j >= 14). 20 non-zero > exact_max_docs=16, yet exact by binomial counts.
    diffs = [0.5] * 14 + [-0.5] * 6
    expected = sum(math.comb(20, j) for j in range(14, 21)) / 2**20
    assert sign_flip_pvalue(diffs, exact_max_docs=16) == pytest.approx(expected, abs=1e-12)


def test_monte_carlo_close_to_exact_on_20_docs() -> None:
    rnd = random.Random(5)
    diffs = [round(rnd.uniform(-1.0, 1.0), 3) for _ in range(20)]
    exact = sign_flip_pvalue(diffs, exact_max_docs=20)
    mc = sign_flip_pvalue(diffs, exact_max_docs=0, n_resamples=20000, seed=1)
    assert 0.02 < exact < 0.98  # a case where the tail is not trivial
    assert mc == pytest.approx(exact, abs=0.015)  # SE <= 0.0036
    assert mc == sign_flip_pvalue(diffs, exact_max_docs=0, n_resamples=20000, seed=1)  # seeded
    # the (count + 1) / (n + 1) correction: never 0 even when no flip reaches the observed sum
    assert sign_flip_pvalue([1.0 + i / 100 for i in range(30)], exact_max_docs=0, n_resamples=999) == pytest.approx(
        1 / 1000
    )


def test_pvalue_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        sign_flip_pvalue([1.0, float("nan")])


# -- rules ---------------------------------------------------------------------------------


DOCS5 = ["a", "b", "c", "d", "e"]


def test_strict_is_the_paper_rule_ties_rejected() -> None:
    parent = tallies({d: (1 if d in "ab" else 0, 1) for d in DOCS5})  # 2/5
    tie = tallies({d: (1 if d in "cd" else 0, 1) for d in DOCS5})  # 2/5, other documents
    better = tallies({d: (1 if d in "abc" else 0, 1) for d in DOCS5})  # 3/5
    worse = tallies({d: (1 if d == "e" else 0, 1) for d in DOCS5})
    assert not strict_decision(tie, parent, DOCS5).admitted
    d = strict_decision(better, parent, DOCS5)
    assert d.admitted and d.rule == "strict" and d.p_value == pytest.approx(0.5) and d.T == pytest.approx(1.0)
    assert not strict_decision(worse, parent, DOCS5).admitted


def test_paired_rejects_small_gain_even_with_small_p() -> None:
    docs = [f"d{i}" for i in range(10)]
    parent = tallies({d: (0, 20) for d in docs})
    cand = tallies({d: (1, 20) for d in docs})  # d_i = 0.05 everywhere: T = 0.5, p = 1/1024
    cfg = AdmissionConfig()
    dec = paired_decision(cand, parent, docs, cfg)
    assert dec.p_value == pytest.approx(1 / 1024)
    assert dec.T == pytest.approx(0.5)
    assert not dec.admitted and "T=0.50 docs < 1" in dec.reason
    assert paired_decision(cand, parent, docs, AdmissionConfig(min_gain_docs=0.5)).admitted


def test_paired_rejects_large_p_and_admits_clear_gain() -> None:
    docs = [f"d{i}" for i in range(6)]
    parent = tallies({d: (1, 2) for d in docs})
    noisy = tallies({"d0": (2, 2), "d1": (2, 2), "d2": (0, 2), "d3": (1, 2), "d4": (1, 2), "d5": (2, 2)})  # T=1
    dec = paired_decision(noisy, parent, docs, AdmissionConfig())
    assert dec.T == pytest.approx(1.0) and dec.p_value > 0.1 and not dec.admitted
    clear = tallies({d: (2, 2) for d in docs})  # T = 3, p = 1/64
    dec = paired_decision(clear, parent, docs, AdmissionConfig())
    assert dec.admitted and dec.p_value == pytest.approx(1 / 64)
    assert "p=0.016 <= 0.100" in dec.reason and dec.n_nonzero == 6
    assert dec.candidate_pass_rate == 1.0 and dec.parent_pass_rate == 0.5


def test_paired_differences() -> None:
    cand = tallies({"a": (1, 2), "b": (0, 1)})
    parent = tallies({"a": (1, 3), "b": (1, 1)})
    assert paired_differences(cand, parent, ["a", "b"]) == pytest.approx([0.5 - 1 / 3, -1.0])
    with pytest.raises(ValueError, match="'c'"):
        paired_differences(cand, parent, ["a", "c"])


# -- decide() --------------------------------------------------------------------------------


class Script:
    """Scripted replicates: ``outcomes[k]`` is the set of documents passing in replicate ``k``."""

    def __init__(self, docs: list[str], outcomes: list[set[str]] | set[str]) -> None:
        self.docs = docs
        self.outcomes = outcomes
        self.calls: list[int] = []

    async def __call__(self, k: int) -> dict[str, bool]:
        self.calls.append(k)
        passing = self.outcomes if isinstance(self.outcomes, set) else self.outcomes[k]
        return {d: d in passing for d in self.docs}


def run_decide(cfg: AdmissionConfig, docs: list[str], parent: Tallies, cand: Script, par: Script):
    return asyncio.run(decide(cfg, docs=docs, parent=parent, evaluate_candidate=cand, evaluate_parent=par))


DOCS10 = [f"d{i}" for i in range(10)]


def zero_parent(runs: int = 3) -> Tallies:
    return tallies({d: (0, runs) for d in DOCS10})


def test_decide_paired_spends_two_replicates_and_admits() -> None:
    cand, par = Script(DOCS10, set(DOCS10[:5])), Script(DOCS10, set())
    dec, ct, pt = run_decide(AdmissionConfig(), DOCS10, zero_parent(), cand, par)
    assert cand.calls == [0, 1] and par.calls == []  # the parent already has 3 runs
    assert dec.admitted and dec.evals == 20 and dec.candidate_runs == 2 and dec.parent_runs == 3
    assert dec.p_value == pytest.approx(1 / 32) and dec.T == pytest.approx(5.0)
    assert ct.min_runs(DOCS10) == 2 and ct["d0"] == DocTally(2, 2)
    assert pt == zero_parent()


def test_decide_stops_early_when_not_ahead() -> None:
    parent = tallies({d: (1, 3) for d in DOCS10})
    cand, par = Script(DOCS10, set(DOCS10[:3])), Script(DOCS10, set())  # T = 3 - 10/3 < 0
    dec, ct, _ = run_decide(AdmissionConfig(), DOCS10, parent, cand, par)
    assert cand.calls == [0] and not dec.admitted and dec.evals == 10
    assert dec.p_value is None and "stopped early" in dec.reason and ct.min_runs(DOCS10) == 1
    cand = Script(DOCS10, set(DOCS10[:3]))
    dec, _, _ = run_decide(AdmissionConfig(stop_if_not_ahead=False), DOCS10, parent, cand, par)
    assert cand.calls == [0, 1] and dec.p_value is not None and dec.evals == 20


@pytest.mark.parametrize(
    ("passing", "calls", "admitted"),
    [
        (1, [0, 1], False),  # p = 1/2 > race_alpha: rejected without racing
        (2, [0, 1, 2], False),  # p = 1/4 == race_alpha: raced (inclusive), still 1/4
        (3, [0, 1, 2], False),  # p = 1/8 in (alpha, race_alpha]: raced once, max_replicates reached
        (4, [0, 1], True),  # p = 1/16 <= alpha: admitted, no race
    ],
)
def test_decide_races_only_inside_alpha_race_alpha(passing: int, calls: list[int], admitted: bool) -> None:
    cfg = AdmissionConfig(replicates=2, race_alpha=0.25, max_replicates=3, race_parent=False)
    cand, par = Script(DOCS10, set(DOCS10[:passing])), Script(DOCS10, set())
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, par)
    assert cand.calls == calls and dec.admitted is admitted
    assert dec.candidate_runs == len(calls) and dec.evals == 10 * len(calls)
    if len(calls) == 3:
        assert "raced replicate 3" in dec.reason


def test_decide_race_can_turn_a_borderline_case_and_respects_switches() -> None:
    cfg = AdmissionConfig(replicates=2, race_alpha=0.25, max_replicates=4, race_parent=False)
    # replicates 0 and 1 pass 3 docs (p = 1/8); replicate 2 passes 4 more docs: p drops to 1/128
    outcomes = [set(DOCS10[:3]), set(DOCS10[:3]), set(DOCS10[:7]), set(DOCS10)]
    cand = Script(DOCS10, outcomes)
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert cand.calls == [0, 1, 2] and dec.admitted and dec.p_value == pytest.approx(1 / 128)
    # race_alpha=None: no race
    cand = Script(DOCS10, outcomes)
    dec, _, _ = run_decide(AdmissionConfig(race_alpha=None), DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert cand.calls == [0, 1] and not dec.admitted
    # a borderline p keeps racing up to max_replicates
    cand = Script(DOCS10, set(DOCS10[:3]))
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert cand.calls == [0, 1, 2, 3] and dec.candidate_runs == 4 and dec.evals == 40


def test_look_alphas_spend_alpha_only_when_racing() -> None:
    assert AdmissionConfig().look_alphas() == pytest.approx((0.08, 0.07))
    assert AdmissionConfig(race_alpha=None).look_alphas() == (0.10, 0.10)  # one look: all of alpha
    cfg = AdmissionConfig(alpha=0.05, race_alpha=0.2, first_look_share=1.0, raced_look_share=0.5)
    assert cfg.look_alphas() == pytest.approx((0.05, 0.025))


def test_decide_tests_each_look_at_its_spent_level() -> None:
    # p = 1/16 = 0.0625: admitted at the first look's 0.08, but not at a raced look's 0.07 * 0.5
    cfg = AdmissionConfig(race_parent=False)
    cand = Script(DOCS10, set(DOCS10[:4]))
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert dec.admitted and cand.calls == [0, 1] and "<= 0.080" in dec.reason
    # p = 1/8 at the first look (> 0.08, <= race_alpha): raced; still 1/8 > 0.07: raced again, rejected
    cand = Script(DOCS10, set(DOCS10[:3]))
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert not dec.admitted and cand.calls == [0, 1, 2, 3] and "> 0.070" in dec.reason
    # a raced look between the raced level and alpha keeps racing: it is not yet at its level
    cfg = AdmissionConfig(race_parent=False, raced_look_share=0.5, max_replicates=3)
    outcomes = [set(DOCS10[:3]), set(DOCS10[:3]), set(DOCS10[:4])]
    cand = Script(DOCS10, outcomes)
    dec, _, _ = run_decide(cfg, DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    assert cand.calls == [0, 1, 2] and not dec.admitted and "> 0.050" in dec.reason


def test_decide_race_parent_adds_one_fresh_parent_replicate_per_raced_look() -> None:
    cfg = AdmissionConfig(replicates=2, race_alpha=0.25, max_replicates=4)  # race_parent by default
    cand, par = Script(DOCS10, set(DOCS10[:3])), Script(DOCS10, set())
    dec, ct, pt = run_decide(cfg, DOCS10, zero_parent(), cand, par)
    assert cand.calls == [0, 1, 2, 3] and par.calls == [3, 4]  # the parent's next replicate indices
    assert pt.min_runs(DOCS10) == 5 and ct.min_runs(DOCS10) == 4
    assert dec.parent_runs == 5 and dec.evals == 40 + 20
    # the parent's fresh replicates count: a parent that passes everything ends the race rejected
    par = Script(DOCS10, set(DOCS10))
    dec, _, pt = run_decide(cfg, DOCS10, zero_parent(), Script(DOCS10, set(DOCS10[:3])), par)
    assert par.calls == [3] and not dec.admitted and dec.T == pytest.approx(3 - 10 / 4) and pt["d9"] == DocTally(1, 4)


def test_decide_tops_up_parent_only_to_missing_runs() -> None:
    parent = tallies({d: (0, 1) for d in DOCS10})
    parent = parent.merged(tallies({"d0": (1, 1)}))  # d0 already has 2 runs
    cand, par = Script(DOCS10, set(DOCS10[:6])), Script(DOCS10, {"d9"})
    dec, _, pt = run_decide(AdmissionConfig(min_parent_runs=3), DOCS10, parent, cand, par)
    assert par.calls == [1, 2]  # the parent's run indices continue from its fewest runs
    assert all(pt[d].runs == 3 for d in DOCS10)
    assert pt["d0"] == DocTally(1, 3) and pt["d9"] == DocTally(2, 3)  # d0 skipped replicate 1
    assert dec.evals == 9 + 10 + 20  # replicate 1 for 9 docs, replicate 2 for 10, then 2 candidate replicates
    assert parent["d1"].runs == 1  # the caller's tallies are not modified
    # a parent with enough runs is not re-evaluated
    par = Script(DOCS10, set())
    run_decide(AdmissionConfig(min_parent_runs=3), DOCS10, pt, Script(DOCS10, set(DOCS10)), par)
    assert par.calls == []


def test_decide_strict_uses_one_fresh_parent_replicate() -> None:
    parent = tallies({d: (3, 3) for d in DOCS10})  # parent's history says perfect...
    cand, par = Script(DOCS10, set(DOCS10[:4])), Script(DOCS10, set(DOCS10[:3]))  # ...its fresh run says 3/10
    dec, ct, pt = run_decide(AdmissionConfig(rule="strict"), DOCS10, parent, cand, par)
    assert cand.calls == [0] and par.calls == [3]
    assert dec.admitted and dec.evals == 20 and dec.parent_runs == 1 and dec.candidate_runs == 1
    assert dec.candidate_pass_rate == 0.4 and dec.parent_pass_rate == 0.3
    assert pt["d9"] == DocTally(3, 4) and pt["d0"] == DocTally(4, 4)
    # a tie is rejected
    dec, _, _ = run_decide(
        AdmissionConfig(rule="strict"),
        DOCS10,
        parent,
        Script(DOCS10, set(DOCS10[5:8])),
        Script(DOCS10, set(DOCS10[:3])),
    )
    assert not dec.admitted


def test_decide_requires_every_document() -> None:
    cand = Script(DOCS10[:9], set())
    with pytest.raises(ValueError, match="d9"):
        run_decide(AdmissionConfig(), DOCS10, zero_parent(), cand, Script(DOCS10, set()))
    with pytest.raises(ValueError, match="no validation documents"):
        run_decide(AdmissionConfig(), [], zero_parent(), cand, Script(DOCS10, set()))


def test_decision_to_json() -> None:
    dec, _, _ = run_decide(AdmissionConfig(), DOCS10, zero_parent(), Script(DOCS10, set(DOCS10)), Script(DOCS10, set()))
    out = json.loads(json.dumps(dec.to_json()))
    assert out["admitted"] is True and out["rule"] == "paired" and out["evals"] == 20
    assert set(out) == {f for f in AdmissionDecision.__dataclass_fields__}


# -- tallies -------------------------------------------------------------------------------


def test_tallies_roundtrip_and_arithmetic() -> None:
    t = Tallies()
    t.add_run({"a": True, "b": False})
    t.add_run({"a": True, "b": True, "c": False})
    assert t.to_json() == {"a": [2, 2], "b": [1, 2], "c": [0, 1]}
    assert Tallies.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert t.min_runs(["a", "b"]) == 2 and t.min_runs(["a", "c"]) == 1 and t.min_runs(["a", "zz"]) == 0
    assert t.pass_rate() == pytest.approx((1 + 0.5 + 0) / 3)
    assert t.pass_rate(["a", "b"]) == pytest.approx(0.75)
    m = t.merged(Tallies({"a": (0, 1), "z": DocTally(1, 1)}))
    assert m["a"] == DocTally(2, 3) and m["z"].fraction == 1.0 and "z" not in t and "z" in m
    assert m.docs() == ["a", "b", "c", "z"]
    with pytest.raises(ValueError, match="runs == 0"):
        _ = DocTally(0, 0).fraction
    with pytest.raises(ValueError, match="'a'"):
        Tallies({"a": (3, 2)})
    with pytest.raises(ValueError, match="'x'"):
        Tallies.from_json({"x": [1]})
    with pytest.raises(ValueError, match="no runs"):
        t.pass_rate(["a", "zz"])


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rule", "loose"),
        ("replicates", 0),
        ("replicates", 1.5),
        ("stop_if_not_ahead", "yes"),
        ("min_parent_runs", 0),
        ("min_gain_docs", -1.0),
        ("min_gain_docs", float("inf")),
        ("alpha", 0.0),
        ("alpha", 1.0),
        ("race_alpha", 0.05),  # must exceed alpha = 0.10
        ("race_alpha", 1.5),
        ("race_parent", 1),
        ("first_look_share", 0.0),
        ("raced_look_share", 1.5),
        ("max_replicates", 1),  # below replicates = 2
        ("n_resamples", 10),
        ("exact_max_docs", 25),
        ("exact_max_docs", True),
        ("seed", -1),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"AdmissionConfig\.{field} must"):
        AdmissionConfig(**{field: value})


def test_config_defaults_are_valid() -> None:
    cfg = AdmissionConfig()
    assert cfg.rule == "paired" and cfg.alpha == 0.10 and cfg.min_gain_docs == 1.0
    assert AdmissionConfig(race_alpha=None).race_alpha is None


# -- bootstrap and noise floor ---------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_narrows_with_more_docs() -> None:
    rnd = random.Random(11)
    small = [rnd.choice([-1, -0.5, 0, 0, 0.5, 1, 1]) for _ in range(25)]
    large = [rnd.choice([-1, -0.5, 0, 0, 0.5, 1, 1]) for _ in range(400)]
    lo, hi = bootstrap_ci(small, seed=1)
    assert lo < sum(small) / len(small) < hi
    lo2, hi2 = bootstrap_ci(large, n_resamples=2000, seed=1)
    assert lo2 < sum(large) / len(large) < hi2
    assert hi2 - lo2 < (hi - lo) / 2  # sqrt(400 / 25) = 4 times narrower in theory
    assert bootstrap_ci(small, seed=1) == (lo, hi)
    lo90, hi90 = bootstrap_ci(small, level=0.5, seed=1)
    assert lo <= lo90 <= hi90 <= hi
    with pytest.raises(ValueError, match="no differences"):
        bootstrap_ci([])


def test_noise_floor() -> None:
    reps = [{"a": True, "b": True, "c": False, "d": False}, {"a": True, "b": False, "c": False, "d": False}]
    nf = noise_floor(reps)
    assert nf["n_replicates"] == 2 and nf["n_docs"] == 4
    assert nf["mean"] == pytest.approx(0.375) and nf["min"] == 0.25 and nf["max"] == 0.5
    assert nf["std"] == pytest.approx(math.sqrt(2 * 0.125**2))
    assert nf["doc_spread"] == pytest.approx(0.25)
    one = noise_floor(reps[:1])
    assert one["std"] is None and one["doc_spread"] is None
    with pytest.raises(ValueError):
        noise_floor([])
