"""Role scripts for the scripted server: make the inner loop's outcome a test parameter.

A :class:`Scenario` answers every role of the inner loop:

- challenger: a valid challenge whose question is ``"Q<doc marker> r<round>"`` (the marker is
  the ``MARK-xxx`` token found in the document text; the round is how many first-attempt
  challenger requests that document has had);
- quality verifier: passes unless the round's plan says ``qv=False``;
- solvers: ``"ANSWER side=<weak|strong> q=<question> i=<sample index>"``;
- judge: binary verdicts on the ten equally weighted criteria ``c1..c10``: the first
  ``round(10 * score)`` satisfied, so the attempt scores exactly the planned score.

So ``RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.8, 0.8, 0.8])`` makes the gate see exactly
those scores.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.scripted_server import Reply

MARK = re.compile(r"MARK-[A-Za-z0-9]+")


@dataclass
class RoundPlan:
    """What one round of one document looks like from the gate's side."""

    weak: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    strong: list[float] = field(default_factory=lambda: [0.9, 0.9, 0.9])
    qv: bool = True
    challenge: str | dict[str, Any] | None = None  # override the challenger's raw reply
    exact_answer: str | None = None  # verifiable mode: the reference answer
    weak_answers: list[str] | None = None  # verifiable mode: final answers per attempt
    strong_answers: list[str] | None = None


N_CRITERIA = 10


def challenge_json(question: str, *, reference: str = "the reference answer") -> dict[str, Any]:
    return {
        "context": "A researcher studies the setting described in the paper.",
        "question": question,
        "reference_answer": reference,
        "rubric": [
            {"id": f"c{i}", "criterion": f"states key point {i}", "weight": 1} for i in range(1, N_CRITERIA + 1)
        ],
        "question_type": "mechanism",
    }


class Scenario:
    """A script for :class:`~tests.scripted_server.ScriptedServer`.

    Args:
        plans: rounds per document marker; ``"*"`` applies to every document without its own
            entry. A round beyond the list repeats the last plan.
    """

    def __init__(self, plans: dict[str, list[RoundPlan]]) -> None:
        self.plans = plans
        self.rounds: dict[str, int] = {}
        self._lock = threading.Lock()

    def plan(self, marker: str, rnd: int) -> RoundPlan:
        seq = self.plans.get(marker) or self.plans["*"]
        return seq[min(rnd, len(seq)) - 1]

    @staticmethod
    def _parse_q(text: str) -> tuple[str, int]:
        m = re.search(r"Q(MARK-[A-Za-z0-9]+) r(\d+)", text)
        assert m, f"no scripted question in: {text[:200]!r}"
        return m.group(1), int(m.group(2))

    def __call__(self, role: str, body: dict[str, Any]) -> Reply | str | dict[str, Any]:
        msgs = body["messages"]
        user = msgs[1]["content"] if len(msgs) > 1 else msgs[0]["content"]
        if role == "challenger":
            marker = MARK.search(user).group(0)  # type: ignore[union-attr]
            with self._lock:
                if len(msgs) <= 2:  # a first attempt, not a repair request
                    self.rounds[marker] = self.rounds.get(marker, 0) + 1
                rnd = self.rounds[marker]
            p = self.plan(marker, rnd)
            if p.challenge is not None and len(msgs) <= 2:
                return p.challenge
            if p.exact_answer is not None:
                return challenge_json(f"Q{marker} r{rnd}", reference=p.exact_answer)
            return challenge_json(f"Q{marker} r{rnd}")
        if role == "quality_verifier":
            marker, rnd = self._parse_q(user)
            ok = self.plan(marker, rnd).qv
            return {
                "context_leak": not ok,
                "generic": False,
                "multi_part": False,
                "rubric_covers_answer": True,
                "reason": "fine" if ok else "the context states the answer",
            }
        if role == "main_agent":
            return "Use a different section of the document."
        if role in ("weak_solver", "strong_solver"):
            side = role.split("_")[0]
            marker, rnd = self._parse_q(user)
            i = body.get("seed", 0) % 1000  # strong attempts are seeded from 1000 (inner.evaluator.roles)
            p = self.plan(marker, rnd)
            answers = p.weak_answers if side == "weak" else p.strong_answers
            final = f"\nFinal answer: {answers[i]}" if answers else ""
            return f"ANSWER side={side} q=Q{marker} r{rnd} i={i}{final}"
        if role == "judge":
            m = re.search(r"ANSWER side=(\w+) q=Q(MARK-[A-Za-z0-9]+) r(\d+) i=(\d+)", user)
            assert m, f"judge saw no scripted answer: {user[-300:]!r}"
            side, marker, rnd, i = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            scores = getattr(self.plan(marker, rnd), side)
            k = round(N_CRITERIA * scores[i])
            return {"grades": [{"id": f"c{j}", "score": int(j <= k)} for j in range(1, N_CRITERIA + 1)]}
        raise AssertionError(f"unexpected role {role!r}")
