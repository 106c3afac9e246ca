"""``stats.json``: the run's numbers, recomputed from the records on disk.

Definitions (all fractions in [0, 1]):

- ``pass_rate``: accepted documents / finished documents (accepted + exhausted).
- ``mean_rounds_to_accept``: mean round number of the accepted round.
- ``final``: weak avg, strong avg and gap over each finished document's *last evaluated*
  challenge (the accepted one, or the last round that reached the solvers). Strong avg and gap
  average only over rounds where the strong solver ran (the weak-first short-circuit skips it).
  This is the per-method comparison of CoT Self-Instruct vs Agentic Self-Instruct.
- ``accepted``: the same averages over accepted examples only.
- ``failure_modes``: counts of every round's outcome.
- ``usage_per_role``: calls and tokens per role summed over the rounds of the records
  (what the data cost, cached or not); ``this_invocation``: what this process sent
  (``calls``) and replayed from the cache (``cached_calls``).
"""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

from inner.records import FailureMode, RoleUsageRecord, RoundRecord, Trajectory


def _mean(xs: list[float]) -> float | None:
    return round(fmean(xs), 4) if xs else None


def _avgs(rounds: list[RoundRecord]) -> dict[str, Any]:
    return {
        "n": len(rounds),
        "weak_avg": _mean([r.weak_avg for r in rounds if r.weak_avg is not None]),
        "strong_avg": _mean([r.strong_avg for r in rounds if r.strong_avg is not None]),
        "gap": _mean([r.gap for r in rounds if r.gap is not None]),
    }


def compute_stats(
    trajectories: list[Trajectory],
    *,
    method: str,
    harness_id: str,
    task: str,
    this_invocation: dict[str, dict[str, int]],
    wall_s: float,
) -> dict[str, Any]:
    """The ``stats.json`` dictionary (see the module docstring for definitions)."""
    finished = [t for t in trajectories if t.finished]
    accepted = [t for t in finished if t.status == "accepted"]
    final_rounds = []
    for t in finished:
        evaluated = [r for r in t.rounds if r.weak_avg is not None]
        if evaluated:
            final_rounds.append(evaluated[-1])
    accepted_rounds = [t.rounds[-1] for t in accepted]
    modes = Counter(r.failure_mode.value for t in trajectories for r in t.rounds)
    usage: dict[str, RoleUsageRecord] = {}
    for t in trajectories:
        for r in t.rounds:
            for role, u in r.usage.items():
                acc = usage.setdefault(role, RoleUsageRecord())
                for k, v in u.model_dump().items():
                    setattr(acc, k, getattr(acc, k) + v)
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage.values())
    return {
        "method": method,
        "harness_id": harness_id,
        "task": task,
        "documents": len(trajectories),
        "finished": len(finished),
        "accepted": len(accepted),
        "errored": sum(t.status == "error" for t in trajectories),
        "pass_rate": round(len(accepted) / len(finished), 4) if finished else None,
        "mean_rounds_to_accept": _mean([float(len(t.rounds)) for t in accepted]),
        "final": _avgs(final_rounds),
        "accepted_examples": _avgs(accepted_rounds),
        "failure_modes": {m.value: modes.get(m.value, 0) for m in FailureMode if modes.get(m.value)},
        "usage_per_role": {k: v.model_dump() for k, v in sorted(usage.items())},
        "tokens_total": tokens,
        "tokens_per_accepted_example": round(tokens / len(accepted), 1) if accepted else None,
        "this_invocation": this_invocation,
        "wall_s": round(wall_s, 2),
    }
