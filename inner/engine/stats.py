"""``stats.json``: the run's numbers, recomputed from the records on disk.

Definitions (all fractions in [0, 1]):

- ``pass_rate``: accepted documents / finished documents (accepted + exhausted + crashed).
- ``errored``: documents whose status is ``error`` (an LLM call failed after retries, or a
  judge grade stayed unusable); the next run into the same directory redoes them, and
  ``autodata-generate`` exits with code 3 while there are any. ``crashed``: documents whose
  harness failed (finished: not redone).
- ``mean_rounds_to_accept``: mean round number of the accepted round.
- ``final``: weak avg, strong avg and gap over each finished document's *last evaluated*
  challenge (the accepted one, or the last round that reached the solvers). Strong avg and gap
  average only over rounds where the strong solver ran (the weak-first short-circuit skips it).
  This is the per-method comparison of CoT Self-Instruct vs Agentic Self-Instruct.
- ``accepted``: the same averages over accepted examples only.
- ``failure_modes``: counts of every round's outcome.
- ``usage_per_role``: calls and tokens per role summed over the records (the evaluator's
  roles per round, the harness's roles per document): what the data cost, cached or not;
  ``this_invocation``: what this process sent (``calls``), replayed from the cache
  (``cached_calls``) and saw fail (``failures``, by kind in ``failure_kinds``).
- ``failures`` / ``failures_by_kind``: LLM calls of this invocation that ended in a typed
  :class:`~inner.sdk.errors.LLMCallError` (``status``, ``timeout``, ``connection``,
  ``bad_response``, ``empty``, ``schema``); the same count as the ``calls.jsonl`` lines of
  this invocation whose ``error`` is set.
- ``replicas``: per endpoint, one entry per replica (``base_urls`` order): ``url``,
  ``requests`` sent to it, ``failures`` on it (after ``openai``'s retries; a request re-sent
  to another replica counts once per replica it failed on), ``in_flight_peak`` and
  ``taken_out`` (times it was taken out for a cool-down; :mod:`inner.llm.replicas`). Counted
  by the LLM client since it was made: this invocation for ``autodata-generate``; the meta
  loop's evaluations share one client, so theirs are the counts so far.

:class:`StatsAccumulator` builds the same numbers one trajectory at a time, so a run over many
documents need not hold them all in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from inner.engine.records import FailureMode, RoleUsageRecord, RoundRecord, Trajectory


class _Mean:
    """A mean of floats in O(1) memory, equal to ``round(statistics.fmean(xs), 4)``: the sum
    is kept exactly (a float is a dyadic rational), as ``fmean``'s ``fsum`` does."""

    __slots__ = ("n", "total")

    def __init__(self) -> None:
        self.n, self.total = 0, Fraction(0)

    def add(self, x: float | None) -> None:
        if x is not None:
            self.n += 1
            self.total += Fraction(x)

    def value(self) -> float | None:
        return round(float(self.total) / self.n, 4) if self.n else None


class _Avgs:
    """``n`` rounds and their weak avg, strong avg and gap means."""

    __slots__ = ("n", "weak", "strong", "gap")

    def __init__(self) -> None:
        self.n = 0
        self.weak, self.strong, self.gap = _Mean(), _Mean(), _Mean()

    def add(self, r: RoundRecord) -> None:
        self.n += 1
        self.weak.add(r.weak_avg)
        self.strong.add(r.strong_avg)
        self.gap.add(r.gap)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "weak_avg": self.weak.value(), "strong_avg": self.strong.value(), "gap": self.gap.value()}


class StatsAccumulator:
    """``stats.json`` built incrementally: :meth:`add` each document's final trajectory (in
    any order, each document once), then :meth:`result`. Memory is constant in the number of
    documents."""

    def __init__(self) -> None:
        self.documents = self.finished = self.accepted = self.errored = self.crashed = 0
        self.final, self.accepted_rounds = _Avgs(), _Avgs()
        self.rounds_to_accept = _Mean()
        self.modes: Counter[str] = Counter()
        self.usage: dict[str, RoleUsageRecord] = {}

    def add(self, t: Trajectory) -> None:
        """Count one document's trajectory."""
        self.documents += 1
        self.errored += t.status == "error"
        self.crashed += t.status == "crashed"
        for r in t.rounds:
            self.modes[r.failure_mode.value] += 1
            self._add_usage(r.usage)
        self._add_usage(getattr(t, "harness_usage", None) or {})
        if not t.finished:
            return
        self.finished += 1
        evaluated = [r for r in t.rounds if r.weak_avg is not None]
        if evaluated:
            self.final.add(evaluated[-1])
        if t.status == "accepted" and t.rounds:
            self.accepted += 1
            acc = next((r for r in reversed(t.rounds) if r.failure_mode is FailureMode.ACCEPTED), t.rounds[-1])
            self.accepted_rounds.add(acc)
            self.rounds_to_accept.add(float(acc.round))

    def _add_usage(self, usage: dict[str, RoleUsageRecord]) -> None:
        for role, u in usage.items():
            acc = self.usage.setdefault(role, RoleUsageRecord())
            for k, v in u.model_dump().items():
                if isinstance(v, int):
                    setattr(acc, k, getattr(acc, k) + v)

    def result(
        self,
        *,
        method: str,
        harness_id: str,
        task: str,
        this_invocation: dict[str, dict[str, Any]],
        wall_s: float,
        replicas: dict[str, list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """The ``stats.json`` dictionary (see the module docstring for definitions);
        ``replicas`` (:meth:`inner.llm.client.LLMClient.replica_counts`) only when given."""
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in self.usage.values())
        kinds: Counter[str] = Counter()
        for u in this_invocation.values():
            kinds.update(u.get("failure_kinds") or {})
        out = {
            "method": method,
            "harness_id": harness_id,
            "task": task,
            "documents": self.documents,
            "finished": self.finished,
            "accepted": self.accepted,
            "errored": self.errored,
            "crashed": self.crashed,
            "pass_rate": round(self.accepted / self.finished, 4) if self.finished else None,
            "mean_rounds_to_accept": self.rounds_to_accept.value(),
            "final": self.final.as_dict(),
            "accepted_examples": self.accepted_rounds.as_dict(),
            "failure_modes": {m.value: self.modes[m.value] for m in FailureMode if self.modes.get(m.value)},
            "usage_per_role": {k: v.model_dump() for k, v in sorted(self.usage.items())},
            "tokens_total": tokens,
            "tokens_per_accepted_example": round(tokens / self.accepted, 1) if self.accepted else None,
            "this_invocation": this_invocation,
            "failures": sum(u.get("failures", 0) for u in this_invocation.values()),
            "failures_by_kind": dict(sorted(kinds.items())),
            "wall_s": round(wall_s, 2),
        }
        if replicas is not None:
            out["replicas"] = replicas
        return out


def compute_stats(
    trajectories: Iterable[Trajectory],
    *,
    method: str,
    harness_id: str,
    task: str,
    this_invocation: dict[str, dict[str, Any]],
    wall_s: float,
) -> dict[str, Any]:
    """The ``stats.json`` dictionary (see the module docstring for definitions).

    Args:
        trajectories: every document's trajectory, once each; any iterable (a generator
            that loads them one at a time keeps memory flat).
        this_invocation: :meth:`inner.llm.client.UsageMeter.as_dict` of this process.
        wall_s: seconds of this invocation.
    """
    acc = StatsAccumulator()
    for t in trajectories:
        acc.add(t)
    return acc.result(method=method, harness_id=harness_id, task=task, this_invocation=this_invocation, wall_s=wall_s)
