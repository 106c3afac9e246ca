"""The conformance scenario: a scripted evaluator and challenger that any shipped harness
can be run against (``tests/test_harness_conformance.py``, ``tests/test_orchestrator.py``,
``tests/test_implementer.py``)."""

from __future__ import annotations

import re
from typing import Any

from tests.scenario import RoundPlan, Scenario
from tests.scripted_server import Reply

#: one weak and one strong attempt (``inner.n_weak=1 inner.n_strong=1``): accepted, too easy
ACCEPT = RoundPlan(weak=[0.5], strong=[0.9])
TOO_EASY = RoundPlan(weak=[0.9], strong=[0.9])


def response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request asked for (llama.cpp or OpenAI ``response_format``)."""
    rf = body.get("response_format") or {}
    return rf.get("schema") or (rf.get("json_schema") or {}).get("schema")


class ConformanceScenario(Scenario):
    """:class:`~tests.scenario.Scenario` for any harness: answers the paper challenger's schema
    (scratchpad, 10 requirements, 3 pitfalls), the ``self_check`` role, a tool-calling main
    agent (a fixed research sequence through the tools), and grades every rubric id the judge
    is asked for (requirements satisfied in proportion to the planned score, pitfalls never
    committed)."""

    def __init__(self, plans: dict[str, list[RoundPlan]], *, self_check_passes: bool = True) -> None:
        super().__init__(plans)
        self.self_check_passes = self_check_passes
        self.tool_calls_sent: list[str] = []

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        schema = response_schema(body) or {}
        props = schema.get("properties", {})
        if role == "challenger" and "pitfalls" in props:
            out = super().__call__(role, body)
            assert isinstance(out, dict)
            return {
                "scratchpad": {"key_insight": "the mechanism", "weak_solver_errors": "the textbook answer"},
                "context": out["context"],
                "question": out["question"],
                "reference_answer": out["reference_answer"],
                "criteria": [{"id": f"c{i}", "criterion": f"states key point {i}", "weight": 1} for i in range(1, 11)],
                "pitfalls": [{"id": f"p{i}", "criterion": f"claims wrong thing {i}", "weight": 2} for i in range(1, 4)],
                "question_type": "mechanism",
            }
        if role == "self_check":
            ok = self.self_check_passes
            return {
                "context_leak": False,
                "generic": not ok,
                "multi_part": False,
                "rubric_covers_answer": True,
                "reason": "fine" if ok else "answerable without the document",
            }
        if role == "main_agent" and body.get("tools"):
            return self.main_agent_step(body)
        if role == "judge":
            return self.judge(body)
        return super().__call__(role, body)

    def main_agent_step(self, body: dict[str, Any]) -> Reply:
        """read_section -> draft_challenge -> self_check -> evaluate_weak -> evaluate_both (if
        the weak side passed) -> draft_challenge ... by the last tool call and its result."""
        msgs = body["messages"]
        last_call = next((m["tool_calls"][-1]["function"]["name"] for m in reversed(msgs) if m.get("tool_calls")), None)
        last_result = next((m["content"] for m in reversed(msgs) if m.get("role") == "tool"), "")
        if last_call is None:
            name, args = "read_section", {"heading": "Title"}
        elif last_call in ("read_section", "evaluate_both") or (
            last_call == "evaluate_weak" and "WEAK_PASSED" not in last_result
        ):
            name, args = "draft_challenge", {"focus": "the mechanism"}
        elif last_call == "draft_challenge":
            name, args = "self_check", {}
        elif last_call == "self_check":
            name, args = "evaluate_weak", {}
        else:
            name, args = "evaluate_both", {}
        with self._lock:
            self.tool_calls_sent.append(name)
            n = len(self.tool_calls_sent)
        return Reply(
            tool_calls=[{"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": args}}]
        )

    def judge(self, body: dict[str, Any]) -> dict[str, Any]:
        user = body["messages"][1]["content"]
        m = re.search(r"ANSWER side=(\w+) q=Q(MARK-[A-Za-z0-9]+) r(\d+) i=(\d+)", user)
        assert m, user[-300:]
        side, marker, rnd, i = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        score = getattr(self.plan(marker, rnd), side)[i]
        ids = response_schema(body)["properties"]["grades"]["items"]["properties"]["id"]["enum"]
        positive = [x for x in ids if not x.startswith("p")]
        k = round(len(positive) * score)
        return {"grades": [{"id": x, "score": int(x in positive[:k])} for x in ids]}
