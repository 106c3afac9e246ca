"""Noise-aware admission of a mutant: the paired, replicated rule and the paper's strict rule.

Why
---
The paper (Autodata) admits a mutant when its validation pass rate on ONE evaluation is strictly
greater than its parent's on ONE evaluation ("strict" rule, :func:`strict_decision`). Solvers
sample at temperature 1.0, so both pass rates are noisy: with 25 validation documents that rule
admits roughly 4 in 10 mutants that are no better (``experiments/bench/admission.py`` measures it).

The paired rule (default)
-------------------------
Each harness keeps per-document tallies over its replicates (:class:`Tallies`: document id ->
passes and runs). For validation documents ``i = 1..n`` the paired difference is

    d_i = (candidate passes_i / candidate runs_i) - (parent passes_i / parent runs_i)   in [-1, 1]

and the statistic is their sum, in documents (a gain of ``T`` documents is ``100 * T / n`` points
of pass rate):

    T = sum_i d_i

The candidate is admitted iff ``T >= min_gain_docs`` (default 1 document) and the one-sided
sign-flip randomization p-value of ``T`` is ``<= alpha`` (default 0.10). Under H0 (the mutant is
no better: each ``d_i`` is symmetric about zero) every pattern of signs of the non-zero ``d_i``
is equally likely, so ``p = P(sum_i s_i |d_i| >= T)`` with independent fair signs ``s_i``.

Assumptions: documents are independent of each other; under H0 the signs of the paired
differences are exchangeable (symmetric about zero), which holds exactly when candidate and parent
have the same number of runs on a document and is an approximation otherwise; replicates are
independent samples of the solvers at temperature 1.0 (seeds and cache keys derive from the
replicate index, so replicate ``k`` of a harness is reproducible and replicate ``k + 1`` is fresh).

The procedure (:func:`decide`) first tops the parent's tallies up to ``min_parent_runs`` runs per
document, evaluates one candidate replicate, stops if the candidate is not ahead (``T <= 0``),
else evaluates up to ``replicates`` candidate replicates and tests; when the p-value falls just
short (above the look's level but ``<= race_alpha``) it races one more candidate replicate, and
one more parent replicate (``race_parent``), and tests again, while that holds and fewer than
``max_replicates`` were used. Repeated looks at the data inflate the false admission rate, so the
looks spend ``alpha`` between them (alpha spending, as in group-sequential trials): the first test
is at ``alpha * first_look_share`` (0.08) and each raced one at ``alpha * raced_look_share``
(0.07); without racing the one test is at ``alpha``. The shares are calibrated by simulation, as
Pocock's constants are, so that the whole procedure admits at most about ``alpha`` of neutral
mutants on the benchmark's synthetic world (``experiments/bench/admission.py``; figures in
:class:`AdmissionConfig` and ``experiments/bench/README.md``). Adding a parent replicate to each
raced look matters: the candidate is compared with the parent's tallies, and a neutral candidate
that races is most often one whose parent happened to run low; a fresh parent run re-draws that
luck instead of confirming it.

Winner's curse: a candidate is admitted because its replicates came out well, so the tallies that
admitted it overestimate it. :func:`decide` returns those tallies separately; the caller keeps them
apart from the harness's tallies used when it is later a parent (it is then topped up with fresh
replicates).

Sources
-------
- Sign-flip (randomization) test: R. A. Fisher, *The Design of Experiments* (1935), chapter III
  (Darwin's paired Zea mays data); E. J. G. Pitman, "Significance tests which may be applied to
  samples from any populations" (1937). Exact enumeration over sign patterns, or seeded Monte
  Carlo with the ``(count + 1) / (n + 1)`` correction (Phipson & Smyth, "Permutation p-values
  should never be zero", 2010).
- Alpha spending over repeated looks: S. J. Pocock, "Group sequential methods in the design
  and analysis of clinical trials", Biometrika 64 (1977); K. K. G. Lan & D. L. DeMets,
  "Discrete sequential boundaries for clinical trials", Biometrika 70 (1983).
- Racing (one more replicate when the evidence is borderline, instead of a fixed budget):
  M. López-Ibáñez, J. Dubois-Lacoste, L. Pérez Cáceres, M. Birattari, T. Stützle, "The irace
  package: Iterated racing for automatic algorithm configuration", Operations Research
  Perspectives 3 (2016).
- Paired differences per question, resampling a question several times, clustered standard
  errors: E. Miller, "Adding Error Bars to Evals: A Statistical Approach to Language Model
  Evaluations", arXiv:2411.00640 (2024). Here a document with all its replicates is one cluster:
  the unit whose sign is flipped and which :func:`bootstrap_ci` resamples.
- Percentile bootstrap over documents (:func:`bootstrap_ci`): B. Efron & R. Tibshirani, *An
  Introduction to the Bootstrap* (1993), chapter 13.
- The strict rule: the Autodata paper's admission (validation pass rate strictly greater than the
  parent's, one evaluation each).

Everything here is pure (no I/O); :func:`decide` is a coroutine only because it awaits the
caller's evaluation callbacks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

RULES = ("strict", "paired")

# Sums of sign-flipped differences closer than this (in documents) count as equal: the observed
# sum and an enumerated sum are computed in different orders, so exact ties differ by ~1e-15.
_TIE_EPS = 1e-7
# Differences are grouped by magnitude rounded to this many decimals (tally fractions such as
# 1/3 and 2/3 - 1/3 differ in the last bit).
_ROUND = 9
# Monte Carlo sign matrices up to this many entries are cached (float64: 8 bytes each).
_CACHE_MAX_ENTRIES = 1 << 22


# --------------------------------------------------------------------------------------------
# Tallies
# --------------------------------------------------------------------------------------------


@dataclass
class DocTally:
    """Passes and runs of one harness on one document.

    Attributes:
        passes: replicates in which the document passed (``0 <= passes <= runs``).
        runs: replicates evaluated.
    """

    passes: int = 0
    runs: int = 0

    @property
    def fraction(self) -> float:
        """Pass fraction ``passes / runs`` in [0, 1]. Raises ValueError when ``runs == 0``."""
        if self.runs == 0:
            raise ValueError("DocTally.fraction: no runs (runs == 0)")
        return self.passes / self.runs


def _as_tally(doc: str, value: DocTally | tuple[int, int] | Sequence[int]) -> DocTally:
    if isinstance(value, DocTally):
        passes, runs = value.passes, value.runs
    else:
        if len(value) != 2:
            raise ValueError(f"tally of document {doc!r} must be (passes, runs), got {value!r}")
        passes, runs = value
    for name, v in (("passes", passes), ("runs", runs)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"tally of document {doc!r}: {name} must be an int, got {v!r}")
    if not 0 <= passes <= runs:
        raise ValueError(f"tally of document {doc!r}: need 0 <= passes <= runs, got passes={passes} runs={runs}")
    return DocTally(passes, runs)


class Tallies:
    """Per-document pass counts of one harness over its replicates: ``{doc_id: DocTally}``.

    Replicate ``k`` of a document is its ``k``-th run (``k = 0..runs - 1``): tallies grow one
    replicate at a time through :meth:`add_run`.

    Args:
        counts: ``{doc_id: DocTally | (passes, runs)}``; copied. Raises ValueError unless
            ``0 <= passes <= runs`` (ints).
    """

    def __init__(self, counts: Mapping[str, DocTally | tuple[int, int]] | None = None) -> None:
        self._t: dict[str, DocTally] = {}
        for doc, value in (counts or {}).items():
            self._t[str(doc)] = _as_tally(str(doc), value)

    def add_run(self, outcomes: Mapping[str, bool]) -> None:
        """Add one replicate: ``{doc_id: passed}``; each listed document gets ``runs += 1``."""
        for doc, passed in outcomes.items():
            t = self._t.setdefault(str(doc), DocTally())
            t.runs += 1
            t.passes += 1 if passed else 0

    def merged(self, other: Tallies) -> Tallies:
        """A new Tallies with passes and runs summed per document (the union of documents)."""
        out = self.copy()
        for doc, t in other._t.items():
            mine = out._t.setdefault(doc, DocTally())
            mine.passes += t.passes
            mine.runs += t.runs
        return out

    def copy(self) -> Tallies:
        """An independent copy."""
        out = Tallies()
        out._t = {doc: DocTally(t.passes, t.runs) for doc, t in self._t.items()}
        return out

    def min_runs(self, docs: Iterable[str]) -> int:
        """Fewest runs over ``docs`` (0 if one is missing). Raises ValueError for no documents."""
        runs = [self._t[d].runs if d in self._t else 0 for d in docs]
        if not runs:
            raise ValueError("min_runs: no documents")
        return min(runs)

    def max_runs(self, docs: Iterable[str]) -> int:
        """Most runs over ``docs`` (missing documents count 0). Raises ValueError for no documents."""
        runs = [self._t[d].runs if d in self._t else 0 for d in docs]
        if not runs:
            raise ValueError("max_runs: no documents")
        return max(runs)

    def pass_rate(self, docs: Iterable[str] | None = None) -> float:
        """Mean over ``docs`` (default: every tallied document) of the pass fraction, in [0, 1].

        Each document weighs the same whatever its number of runs. Raises ValueError for no
        documents, or for a document that is missing or has no runs.
        """
        docs = list(self._t) if docs is None else list(docs)
        if not docs:
            raise ValueError("pass_rate: no documents")
        missing = [d for d in docs if d not in self._t or self._t[d].runs == 0]
        if missing:
            raise ValueError(f"pass_rate: no runs for {len(missing)} document(s), e.g. {missing[:3]}")
        return sum(self._t[d].fraction for d in docs) / len(docs)

    def docs(self) -> list[str]:
        """Tallied document ids, in insertion order."""
        return list(self._t)

    def to_json(self) -> dict[str, list[int]]:
        """``{doc_id: [passes, runs]}``."""
        return {doc: [t.passes, t.runs] for doc, t in self._t.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Sequence[int]]) -> Tallies:
        """Inverse of :meth:`to_json`. Raises ValueError for a malformed entry."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Tallies.from_json: expected a mapping doc -> [passes, runs], got {type(d).__name__}")
        return cls({doc: _as_tally(str(doc), v) for doc, v in d.items()})

    def __getitem__(self, doc: str) -> DocTally:
        return self._t[doc]

    def __contains__(self, doc: object) -> bool:
        return doc in self._t

    def __len__(self) -> int:
        return len(self._t)

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tallies) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Tallies({len(self._t)} docs)"


# --------------------------------------------------------------------------------------------
# Configuration and decision
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"AdmissionConfig.{name} must be an integer {rng}, got {value!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AdmissionConfig:
    """How a mutant is admitted (see the module docstring).

    Attributes:
        rule: ``"paired"`` (default) or ``"strict"`` (the paper's rule: one run each, strictly greater).
        replicates: candidate replicates ``r`` evaluated before the test (paired), >= 1.
        stop_if_not_ahead: reject after the first candidate replicate when ``T <= 0`` (saves evaluations).
        min_parent_runs: the parent's tallies are topped up to this many runs per document, >= 1.
        min_gain_docs: admit only if ``T >= min_gain_docs`` (documents), >= 0.
        alpha: the false admission rate the paired procedure is held to, in (0, 1): without
            racing its one test admits iff the sign-flip p-value is ``<= alpha``; with racing the
            tests spend it (:meth:`look_alphas`).
        race_alpha: when a test's p-value is above its level but ``<= race_alpha``, race one more
            candidate replicate (irace-style); ``None`` disables racing; else in (alpha, 1].
        race_parent: each raced look also adds one fresh parent replicate.
        first_look_share / raced_look_share: with racing, the first test is at
            ``alpha * first_look_share`` and each raced test at ``alpha * raced_look_share``, in (0, 1].
        max_replicates: most candidate replicates with racing, >= ``replicates``.
        n_resamples: Monte Carlo sign flips when the exact distribution is too big, >= 100.
        exact_max_docs: exact enumeration while the distribution of sign-flipped sums has at most
            ``2 ** exact_max_docs`` support points (always the case with at most this many non-zero
            differences), in [0, 24].
        seed: seed of the Monte Carlo sign flips, >= 0.

    Defaults: ``alpha = 0.10`` and ``min_gain_docs = 1`` are fixed by the design; the rest were
    chosen with ``experiments/bench/admission.py`` (synthetic documents with known pass
    probabilities, 25 validation documents, a parent with 3 runs; figures and commands in
    ``experiments/bench/README.md``). Two candidate replicates tested at 0.08, racing up to 4
    while ``p <= race_alpha = 0.20``, each raced look adding a parent replicate and tested at
    0.07: 8.9 % / 9.2 % of neutral mutants admitted and 70.9 % / 71.7 % of +12-point mutants
    (mean pass rate 0.3 / 0.6, 20,000 decisions per cell), 45 and 62 document evaluations per
    decision (neutral, +12). Racing at an unadjusted 0.10 without the parent replicate (the
    previous default): 10.3-10.7 % and 70.5-71.3 %; without racing: 8-8.5 % and 62 %.
    ``min_parent_runs = 3`` matches the noise floor (``meta.noise_reps``), so a starting parent
    needs no top-up.

    Raises:
        ValueError: naming the field and its valid range.
    """

    rule: str = "paired"
    replicates: int = 2
    stop_if_not_ahead: bool = True
    min_parent_runs: int = 3
    min_gain_docs: float = 1.0
    alpha: float = 0.10
    race_alpha: float | None = 0.20
    race_parent: bool = True
    first_look_share: float = 0.8
    raced_look_share: float = 0.7
    max_replicates: int = 4
    n_resamples: int = 20000
    exact_max_docs: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"AdmissionConfig.rule must be one of {RULES}, got {self.rule!r}")
        _check_int("replicates", self.replicates, 1)
        if not isinstance(self.stop_if_not_ahead, bool):
            raise ValueError(f"AdmissionConfig.stop_if_not_ahead must be a bool, got {self.stop_if_not_ahead!r}")
        _check_int("min_parent_runs", self.min_parent_runs, 1)
        if not (_is_real(self.min_gain_docs) and self.min_gain_docs >= 0):
            raise ValueError(f"AdmissionConfig.min_gain_docs must be a finite number >= 0, got {self.min_gain_docs!r}")
        if not (_is_real(self.alpha) and 0 < self.alpha < 1):
            raise ValueError(f"AdmissionConfig.alpha must be in (0, 1), got {self.alpha!r}")
        if self.race_alpha is not None and not (_is_real(self.race_alpha) and self.alpha < self.race_alpha <= 1):
            raise ValueError(
                f"AdmissionConfig.race_alpha must be None or in (alpha, 1] = ({self.alpha}, 1], got {self.race_alpha!r}"
            )
        if not isinstance(self.race_parent, bool):
            raise ValueError(f"AdmissionConfig.race_parent must be a bool, got {self.race_parent!r}")
        for name in ("first_look_share", "raced_look_share"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 < value <= 1):
                raise ValueError(f"AdmissionConfig.{name} must be in (0, 1], got {value!r}")
        _check_int("max_replicates", self.max_replicates, 1)
        if self.max_replicates < self.replicates:
            raise ValueError(
                f"AdmissionConfig.max_replicates must be >= replicates ({self.replicates}), got {self.max_replicates!r}"
            )
        _check_int("n_resamples", self.n_resamples, 100)
        _check_int("exact_max_docs", self.exact_max_docs, 0, 24)
        _check_int("seed", self.seed, 0)

    def look_alphas(self) -> tuple[float, float]:
        """``(first, raced)``: the p-value thresholds of the first test and of each raced test.

        Without racing (``race_alpha is None``) there is one look, tested at ``alpha``. With
        racing, the looks spend ``alpha`` between them (alpha spending, as in group-sequential
        designs): the first at ``alpha * first_look_share``, each raced one at
        ``alpha * raced_look_share``, so that the whole procedure admits about ``alpha`` of
        neutral mutants, not more (the shares are calibrated like Pocock's constants, by
        simulation: ``experiments/bench/admission.py``).
        """
        if self.race_alpha is None:
            return self.alpha, self.alpha
        return self.alpha * self.first_look_share, self.alpha * self.raced_look_share


@dataclass(frozen=True)
class AdmissionDecision:
    """The outcome of one admission.

    Attributes:
        rule: ``"strict"`` or ``"paired"``.
        admitted: whether the candidate is admitted.
        T: sum over documents of the paired differences, in documents (strict: of the two single runs).
        p_value: one-sided sign-flip p-value; ``None`` for the strict rule or when stopped early.
        n_docs: validation documents.
        n_nonzero: documents with a non-zero paired difference.
        candidate_runs: candidate replicates used.
        parent_runs: the parent's fewest runs per document used (strict: 1, the fresh run).
        candidate_pass_rate / parent_pass_rate: mean pass fractions over the documents, in [0, 1].
        evals: document evaluations spent on this decision (candidate + parent top-up or fresh run).
        reason: a sentence, e.g. ``"T=2.50 docs >= 1, p=0.031 <= 0.10: admitted"``.
    """

    rule: str
    admitted: bool
    T: float
    p_value: float | None
    n_docs: int
    n_nonzero: int
    candidate_runs: int
    parent_runs: int
    candidate_pass_rate: float
    parent_pass_rate: float
    evals: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def decision_text(rec: Mapping[str, Any]) -> str | None:
    """A decision recorded in ``history.jsonl`` (:meth:`AdmissionDecision.to_json` merged into
    the iteration record) in one line: ``"T=+1.50, p=0.031, 2 vs 3 runs"`` (T in documents for
    pass-rate runs, in items under ``student_gain``; ``p`` is ``-`` when it was not computed; the
    runs of candidate vs parent are left out where the fitness has no replicates). ``None`` for an
    iteration that reached no decision (an invalid edit, a duplicate, an error)."""
    if rec.get("T") is None:
        return None
    p, runs = rec.get("p_value"), (rec.get("candidate_runs"), rec.get("parent_runs"))
    text = f"T={rec['T']:+.2f}, p={'-' if p is None else f'{p:.3f}'}"
    return text if None in runs else f"{text}, {runs[0]} vs {runs[1]} runs"


def paired_differences(candidate: Tallies, parent: Tallies, docs: Sequence[str]) -> list[float]:
    """``d_i = candidate fraction_i - parent fraction_i`` for each document of ``docs``, in [-1, 1].

    Returns a list of ``len(docs)`` floats (pass-fraction units; their sum is T in documents).
    Raises ValueError when a document has no tally or no runs on either side.
    """
    out = []
    for d in docs:
        if d not in candidate or d not in parent:
            side = "candidate" if d not in candidate else "parent"
            raise ValueError(f"paired_differences: document {d!r} has no tally on the {side} side")
        out.append(candidate[d].fraction - parent[d].fraction)
    return out


def _exact_tail(mags: np.ndarray, observed: float, max_support: int) -> float | None:
    """Exact ``P(sum s_i * mags_i >= observed)`` for fair signs, or None past ``max_support``.

    Equal magnitudes are grouped: ``k`` copies of ``a`` contribute ``a * (2j - k)`` with
    probability ``C(k, j) / 2**k``; the groups' distributions are convolved, merging equal sums.
    """
    keys, counts = np.unique(np.round(mags, _ROUND), return_counts=True)
    values = np.zeros(1)
    probs = np.ones(1)
    for a, k in zip(keys.tolist(), counts.tolist(), strict=True):
        if values.size * (k + 1) > max_support:
            return None
        j = np.arange(k + 1)
        gv = a * (2 * j - k)
        gp = np.array([math.comb(k, int(x)) for x in j], dtype=float) / 2.0**k
        sums = (values[:, None] + gv[None, :]).ravel()
        weights = (probs[:, None] * gp[None, :]).ravel()
        values, inverse = np.unique(np.round(sums, _ROUND), return_inverse=True)
        probs = np.bincount(inverse.ravel(), weights=weights, minlength=values.size)
    return float(min(1.0, probs[values >= observed - _TIE_EPS].sum()))


@lru_cache(maxsize=8)
def _sign_matrix(seed: int, n_resamples: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=(n_resamples, n)).astype(np.float64) * 2.0 - 1.0


def _monte_carlo_tail(mags: np.ndarray, observed: float, n_resamples: int, seed: int) -> float:
    n = mags.size
    if n_resamples * n <= _CACHE_MAX_ENTRIES:
        sums = _sign_matrix(seed, n_resamples, n) @ mags
        count = int((sums >= observed - _TIE_EPS).sum())
    else:
        rng = np.random.default_rng(seed)
        count, left = 0, n_resamples
        chunk = max(1, _CACHE_MAX_ENTRIES // n)
        while left:
            m = min(chunk, left)
            signs = rng.integers(0, 2, size=(m, n)).astype(np.float64) * 2.0 - 1.0
            count += int(((signs @ mags) >= observed - _TIE_EPS).sum())
            left -= m
    return (count + 1) / (n_resamples + 1)


def sign_flip_pvalue(
    diffs: Sequence[float], *, exact_max_docs: int = 16, n_resamples: int = 20000, seed: int = 0
) -> float:
    """One-sided paired sign-flip randomization test (Fisher 1935; Pitman 1937).

    H0: each ``d_i`` is symmetric about 0 (independent documents); H1: the mean is > 0.
    ``p = P(sum_i s_i |d_i| >= sum_i d_i)`` over independent fair signs ``s_i``. Zero differences
    drop out (they add 0 whatever their sign).

    Exact when the distribution of the sign-flipped sum has at most ``2 ** exact_max_docs`` support
    points: always so with at most ``exact_max_docs`` non-zero differences, and also with many more
    when the differences take few distinct magnitudes (tally fractions do: equal magnitudes are
    enumerated by binomial counts). Otherwise seeded Monte Carlo with ``n_resamples`` sign patterns
    and the ``(count + 1) / (n_resamples + 1)`` correction (Phipson & Smyth 2010). Sums within 1e-7
    documents of the observed one count as ties (``>=``).

    Args:
        diffs: paired differences ``d_i`` (any finite reals; in documents' pass-fraction units).
        exact_max_docs: see above, >= 0.
        n_resamples: Monte Carlo sign patterns, >= 1.
        seed: Monte Carlo seed (the same seed gives the same p-value).

    Returns:
        The p-value in (0, 1]; 1.0 when no difference is non-zero.

    Raises:
        ValueError: for a non-finite difference or an invalid argument.
    """
    if exact_max_docs < 0 or n_resamples < 1:
        raise ValueError(
            f"sign_flip_pvalue: need exact_max_docs >= 0 and n_resamples >= 1, got {exact_max_docs}, {n_resamples}"
        )
    d = np.asarray(list(diffs), dtype=float)
    if d.size and not np.all(np.isfinite(d)):
        raise ValueError("sign_flip_pvalue: differences must be finite")
    d = d[d != 0.0]
    if d.size == 0:
        return 1.0
    observed = float(d.sum())
    mags = np.abs(d)
    p = _exact_tail(mags, observed, 1 << exact_max_docs)
    if p is None:
        p = _monte_carlo_tail(mags, observed, n_resamples, seed)
    return p


def bootstrap_ci(
    diffs: Sequence[float], *, level: float = 0.95, n_resamples: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the MEAN paired difference, resampling documents.

    Source: Efron & Tibshirani (1993), ch. 13; documents as the resampling unit follows Miller
    (2024, arXiv:2411.00640), which treats questions as the unit of independence.

    Args:
        diffs: paired differences ``d_i``, one per document (pass-fraction units, [-1, 1] for tallies).
        level: coverage in (0, 1).
        n_resamples: bootstrap resamples, >= 1.
        seed: numpy seed.

    Returns:
        ``(low, high)`` in the units of ``diffs`` (multiply by 100 for points of pass rate).

    Raises:
        ValueError: for no differences, a non-finite one, or an invalid argument.
    """
    d = np.asarray(list(diffs), dtype=float)
    if d.size == 0:
        raise ValueError("bootstrap_ci: no differences")
    if not np.all(np.isfinite(d)):
        raise ValueError("bootstrap_ci: differences must be finite")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level!r}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, _CACHE_MAX_ENTRIES // d.size)
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        means[start : start + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def noise_floor(replicates: Sequence[Mapping[str, bool]]) -> dict[str, Any]:
    """How much one harness's pass rate moves between replicates (its noise floor).

    Args:
        replicates: one ``{doc_id: passed}`` per replicate of the same harness on the same documents.

    Returns:
        ``{"n_replicates", "n_docs", "mean", "std", "min", "max", "doc_spread"}``: pass rates in
        [0, 1] of each replicate summarized (``std`` with ddof=1, ``None`` for one replicate);
        ``doc_spread`` is the fraction of documents (seen in at least two replicates) whose outcome
        differed between replicates (``None`` when no document was seen twice).

    Raises:
        ValueError: for no replicates or an empty replicate.
    """
    if not replicates:
        raise ValueError("noise_floor: no replicates")
    rates = []
    seen: dict[str, set[bool]] = {}
    times: dict[str, int] = {}
    for i, rep in enumerate(replicates):
        if not rep:
            raise ValueError(f"noise_floor: replicate {i} has no documents")
        rates.append(sum(1 for v in rep.values() if v) / len(rep))
        for doc, v in rep.items():
            seen.setdefault(doc, set()).add(bool(v))
            times[doc] = times.get(doc, 0) + 1
    repeated = [doc for doc, n in times.items() if n >= 2]
    spread = sum(1 for doc in repeated if len(seen[doc]) == 2) / len(repeated) if repeated else None
    return {
        "n_replicates": len(rates),
        "n_docs": len(seen),
        "mean": statistics.fmean(rates),
        "std": statistics.stdev(rates) if len(rates) >= 2 else None,
        "min": min(rates),
        "max": max(rates),
        "doc_spread": spread,
    }


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


def _check_docs(docs: Sequence[str]) -> list[str]:
    docs = list(docs)
    if not docs:
        raise ValueError("no validation documents")
    if len(set(docs)) != len(docs):
        raise ValueError("validation documents must be distinct")
    return docs


def strict_decision(candidate: Tallies, parent: Tallies, docs: Sequence[str], *, evals: int = 0) -> AdmissionDecision:
    """The paper's rule (Autodata): admit iff the candidate's pass rate is strictly greater.

    Meant for one run each (:func:`decide` passes the candidate's replicate 0 and one fresh parent
    replicate); with more runs it compares mean pass fractions. Ties are rejected. The decision
    also reports T and the sign-flip p-value of the same comparison, for reference only: the
    rule does not read them.

    Raises:
        ValueError: for no documents or a document without runs.
    """
    docs = _check_docs(docs)
    diffs = paired_differences(candidate, parent, docs)
    c, p = candidate.pass_rate(docs), parent.pass_rate(docs)
    T = float(sum(diffs))
    admitted = c > p
    reason = f"pass rate {c:.3f} {'>' if admitted else '<='} parent {p:.3f} (strict)"
    return AdmissionDecision(
        rule="strict",
        admitted=admitted,
        T=T,
        # reported beside the paper's rule for reference (how sure a one-run comparison is); never used
        p_value=sign_flip_pvalue(diffs),
        n_docs=len(docs),
        n_nonzero=sum(1 for x in diffs if x != 0),
        candidate_runs=candidate.min_runs(docs),
        parent_runs=parent.min_runs(docs),
        candidate_pass_rate=c,
        parent_pass_rate=p,
        evals=evals,
        reason=reason + (": admitted" if admitted else ": rejected"),
    )


def paired_decision(
    candidate: Tallies,
    parent: Tallies,
    docs: Sequence[str],
    cfg: AdmissionConfig,
    *,
    evals: int = 0,
    alpha: float | None = None,
) -> AdmissionDecision:
    """The paired rule: admit iff ``T >= cfg.min_gain_docs`` and the sign-flip p-value ``<= cfg.alpha``.

    ``T = sum_i (candidate fraction_i - parent fraction_i)`` over ``docs`` (documents). The
    p-value is :func:`sign_flip_pvalue` with the config's ``exact_max_docs``, ``n_resamples`` and
    ``seed``.

    Raises:
        ValueError: for no documents or a document without runs on either side.
    """
    docs = _check_docs(docs)
    diffs = paired_differences(candidate, parent, docs)
    T = float(sum(diffs))
    p = sign_flip_pvalue(diffs, exact_max_docs=cfg.exact_max_docs, n_resamples=cfg.n_resamples, seed=cfg.seed)
    gain_ok = T >= cfg.min_gain_docs - 1e-12
    level = cfg.alpha if alpha is None else alpha
    p_ok = p <= level
    admitted = gain_ok and p_ok
    reason = (
        f"T={T:.2f} docs {'>=' if gain_ok else '<'} {cfg.min_gain_docs:g}, "
        f"p={p:.3f} {'<=' if p_ok else '>'} {level:.3f}: {'admitted' if admitted else 'rejected'}"
    )
    return AdmissionDecision(
        rule="paired",
        admitted=admitted,
        T=T,
        p_value=p,
        n_docs=len(docs),
        n_nonzero=sum(1 for x in diffs if x != 0),
        candidate_runs=candidate.min_runs(docs),
        parent_runs=parent.min_runs(docs),
        candidate_pass_rate=candidate.pass_rate(docs),
        parent_pass_rate=parent.pass_rate(docs),
        evals=evals,
        reason=reason,
    )


# --------------------------------------------------------------------------------------------
# The procedure
# --------------------------------------------------------------------------------------------


def _outcomes_for(outcomes: Mapping[str, bool], docs: Iterable[str], who: str, index: int) -> dict[str, bool]:
    docs = list(docs)
    missing = [d for d in docs if d not in outcomes]
    if missing:
        raise ValueError(
            f"{who} replicate {index} has no outcome for {len(missing)} document(s), e.g. {missing[:3]} "
            "(map a failed document to False)"
        )
    return {d: bool(outcomes[d]) for d in docs}


async def decide(
    cfg: AdmissionConfig,
    *,
    docs: Sequence[str],
    parent: Tallies,
    evaluate_candidate: Callable[[int], Awaitable[Mapping[str, bool]]],
    evaluate_parent: Callable[[int], Awaitable[Mapping[str, bool]]],
) -> tuple[AdmissionDecision, Tallies, Tallies]:
    """Admit or reject one candidate, evaluating replicates as the rule needs them.

    ``evaluate_candidate(k)`` / ``evaluate_parent(k)`` evaluate replicate ``k`` of the harness on
    ``docs`` and return ``{doc_id: passed}`` (every document of ``docs``; a failed document is
    ``False``). Replicate ``k`` must be reproducible and distinct replicates independent (seeds and
    cache keys derive from ``k``).

    strict (the paper): candidate replicate 0 and ONE fresh parent replicate, at index
    ``parent.max_runs(docs)`` (unused by every document); the two single runs are compared by
    :func:`strict_decision`. Spends ``2 * len(docs)`` evaluations.

    paired: (1) the parent is topped up to ``cfg.min_parent_runs`` runs per document by calling
    ``evaluate_parent(k)`` for ``k = parent.min_runs(docs) .. min_parent_runs - 1``; only documents
    that lack replicate ``k`` (``runs <= k``) are added and counted, so re-evaluating an old parent
    adds to its tallies without counting a replicate twice. (2) candidate replicate 0; if
    ``cfg.stop_if_not_ahead`` and ``T <= 0``: rejected (``p_value`` None, the reason says it
    stopped). (3) candidate replicates 1 .. ``cfg.replicates - 1``; :func:`paired_decision`.
    (4) racing (irace-style): while ``cfg.race_alpha`` is set, ``alpha < p <= race_alpha`` and
    fewer than ``cfg.max_replicates`` replicates were used: one more candidate replicate, test again.

    Returns:
        ``(decision, candidate_tallies, parent_tallies)``: ``decision.evals`` counts the document
        evaluations spent (candidate + parent); ``candidate_tallies`` are the replicates of THIS
        decision, i.e. the evidence that admitted or rejected the candidate. Because an admitted
        candidate was selected for doing well on them they are optimistic (winner's curse): the
        caller keeps them apart from the tallies it uses when the candidate is later a parent.
        ``parent_tallies`` is a new Tallies: the parent's after the top-up (strict: after the
        fresh run); the ``parent`` argument is not modified.

    Raises:
        ValueError: for no or repeated documents, or a replicate missing a document.
    """
    docs = _check_docs(docs)
    n = len(docs)
    parent = parent.copy()
    candidate = Tallies()
    evals = 0

    async def candidate_run(k: int) -> None:
        nonlocal evals
        candidate.add_run(_outcomes_for(await evaluate_candidate(k), docs, "candidate", k))
        evals += n

    if cfg.rule == "strict":
        k = parent.max_runs(docs)
        fresh = Tallies()
        fresh.add_run(_outcomes_for(await evaluate_parent(k), docs, "parent", k))
        await candidate_run(0)
        parent = parent.merged(fresh)
        decision = strict_decision(candidate, fresh, docs, evals=evals + n)
        return decision, candidate, parent

    for k in range(parent.min_runs(docs), cfg.min_parent_runs):
        lacking = [d for d in docs if (parent[d].runs if d in parent else 0) <= k]
        if not lacking:
            continue
        parent.add_run(_outcomes_for(await evaluate_parent(k), lacking, "parent", k))
        evals += len(lacking)

    await candidate_run(0)
    if cfg.stop_if_not_ahead:
        diffs = paired_differences(candidate, parent, docs)
        T = float(sum(diffs))
        if T <= 0:
            decision = AdmissionDecision(
                rule="paired",
                admitted=False,
                T=T,
                p_value=None,
                n_docs=n,
                n_nonzero=sum(1 for x in diffs if x != 0),
                candidate_runs=1,
                parent_runs=parent.min_runs(docs),
                candidate_pass_rate=candidate.pass_rate(docs),
                parent_pass_rate=parent.pass_rate(docs),
                evals=evals,
                reason=f"T={T:.2f} docs <= 0 after 1 replicate: not ahead, stopped early: rejected",
            )
            return decision, candidate, parent

    for k in range(1, cfg.replicates):
        await candidate_run(k)
    first_alpha, raced_alpha = cfg.look_alphas()
    decision = paired_decision(candidate, parent, docs, cfg, evals=evals, alpha=first_alpha)
    used, level = cfg.replicates, first_alpha
    while (
        cfg.race_alpha is not None
        and decision.p_value is not None
        and level < decision.p_value <= cfg.race_alpha
        and used < cfg.max_replicates
    ):
        first_p, level = decision.p_value, raced_alpha
        await candidate_run(used)
        used += 1
        if cfg.race_parent:
            k = parent.max_runs(docs)
            lacking = [d for d in docs if (parent[d].runs if d in parent else 0) <= k]
            parent.add_run(_outcomes_for(await evaluate_parent(k), lacking, "parent", k))
            evals += len(lacking)
        decision = paired_decision(candidate, parent, docs, cfg, evals=evals, alpha=raced_alpha)
        decision = replace(decision, reason=f"{decision.reason} (raced replicate {used} after p={first_p:.3f})")
    return decision, candidate, parent
