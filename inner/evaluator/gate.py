"""The acceptance gate (part of the frozen evaluator: no harness can change it).

Rubric mode, defaults from the deployed Autodata thresholds (arXiv 2606.25996; ARCHITECTURE.md,
"The frozen evaluator"): QV passed; weak_avg <= 0.65; max weak <= 0.75; no weak score of 0;
0.60 <= strong_avg < 0.95; no strong score of 0; strong_avg - weak_avg >= 0.20.

The weak side is checked first (:func:`check_weak`): if it already fails, the strong solver
is skipped (the weak-first short-circuit).

Verifiable mode (exact answers; the paper's scientific-reasoning setting, arXiv 2606.25996):
k attempts per solver; accept iff at most 1 of 4 weak answers and at least 3 of 4 strong answers
are equivalent to the reference (:func:`check_verifiable_weak`, :func:`check_verifiable`;
thresholds ``gate.verifiable_weak_max_correct`` / ``gate.verifiable_strong_min_correct``).

Comparisons use a tolerance of 1e-9 so that boundary values such as ``0.85 - 0.65`` (which is
``0.19999999999999996`` in binary floating point) count as meeting ``>= 0.20``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import fmean

from inner.config import GateConfig
from inner.engine.records import FailureMode

EPS = 1e-9


@dataclass
class GateDecision:
    """The gate's verdict: ``mode`` (ACCEPTED or why not) and human-readable ``reasons``."""

    mode: FailureMode
    reasons: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.mode is FailureMode.ACCEPTED


def check_weak(weak: list[float], cfg: GateConfig) -> GateDecision | None:
    """Weak-side conditions only; ``None`` means "weak side passes, run the strong solver".

    Args:
        weak: weak-solver scores, each in [0, 1]; at least one.
    """
    avg, top = fmean(weak), max(weak)
    reasons = []
    if avg > cfg.weak_avg_max + EPS:
        reasons.append(f"weak_avg {avg:.3f} > {cfg.weak_avg_max}")
    if top > cfg.weak_max + EPS:
        reasons.append(f"max weak {top:.3f} > {cfg.weak_max}")
    if reasons:
        return GateDecision(FailureMode.TOO_EASY, reasons)
    if cfg.reject_weak_zero and min(weak) <= EPS:
        return GateDecision(FailureMode.WEAK_ZERO, ["a weak score is 0"])
    return None


def check_rubric(weak: list[float], strong: list[float], *, qv_passed: bool, cfg: GateConfig) -> GateDecision:
    """The full rubric-mode gate.

    Args:
        weak / strong: solver scores in [0, 1]; at least one each.
        qv_passed: the quality verifier's verdict.
    """
    if not qv_passed:
        return GateDecision(FailureMode.FAILED_QV, ["quality verifier rejected the challenge"])
    weak_fail = check_weak(weak, cfg)
    if weak_fail is not None:
        return weak_fail
    s_avg, w_avg = fmean(strong), fmean(weak)
    if s_avg >= cfg.strong_avg_max - EPS:
        return GateDecision(FailureMode.TOO_EASY, [f"strong_avg {s_avg:.3f} >= {cfg.strong_avg_max}"])
    reasons = []
    if s_avg < cfg.strong_avg_min - EPS:
        reasons.append(f"strong_avg {s_avg:.3f} < {cfg.strong_avg_min}")
    if cfg.reject_strong_zero and min(strong) <= EPS:
        reasons.append("a strong score is 0")
    if s_avg - w_avg < cfg.min_gap - EPS:
        reasons.append(f"gap {s_avg - w_avg:.3f} < {cfg.min_gap}")
    if reasons:
        return GateDecision(FailureMode.FAILED_STRONG, reasons)
    return GateDecision(FailureMode.ACCEPTED)


def check_verifiable_weak(weak_correct: list[bool], cfg: GateConfig) -> GateDecision | None:
    """Verifiable mode, weak side: TOO_EASY when more than ``verifiable_weak_max_correct`` weak
    answers are equivalent to the reference; ``None`` means "run the strong solver"."""
    n = sum(weak_correct)
    if n > cfg.verifiable_weak_max_correct:
        return GateDecision(
            FailureMode.TOO_EASY,
            [
                f"{n} of {len(weak_correct)} weak answers match the reference (at most {cfg.verifiable_weak_max_correct} allowed)"
            ],
        )
    return None


def check_verifiable(
    weak_correct: list[bool], strong_correct: list[bool], *, qv_passed: bool, cfg: GateConfig
) -> GateDecision:
    """The verifiable-mode gate over per-attempt equivalence with the reference
    (:func:`inner.evaluator.answers.answers_equivalent`)."""
    if not qv_passed:
        return GateDecision(FailureMode.FAILED_QV, ["quality verifier rejected the challenge"])
    weak_fail = check_verifiable_weak(weak_correct, cfg)
    if weak_fail is not None:
        return weak_fail
    n = sum(strong_correct)
    if n < cfg.verifiable_strong_min_correct:
        return GateDecision(
            FailureMode.FAILED_STRONG,
            [
                f"{n} of {len(strong_correct)} strong answers match the reference (at least {cfg.verifiable_strong_min_correct} needed)"
            ],
        )
    return GateDecision(FailureMode.ACCEPTED)
