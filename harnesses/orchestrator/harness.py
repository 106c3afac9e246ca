"""Orchestrator harness: the main agent is an LLM that calls tools, in the spirit of the
coding-agent orchestrator of Autodata (arXiv 2606.25996), whose main agent ran the evaluator
as a tool and decided what to try next.

``run(agent)`` is a tool-calling loop. The main agent (role ``main_agent``,
``prompts/main_agent.md``) sees the document's title and section headings and its round
budget, and calls one of six tools per step:

- ``read_section(heading)``: a section of the document (:meth:`agent.doc.sections`);
- ``draft_challenge(focus)``: the challenger (``prompts/challenger.md``) writes a new draft
  about the focus, with the earlier evaluations summarized as feedback;
- ``self_check()``: the harness's own quality check of the draft (role ``self_check``); its
  verdict is recorded with the round, never gating;
- ``evaluate_weak()`` / ``evaluate_both()``: ``agent.evaluate(draft, side=...)``, the frozen
  evaluator as a tool (one round per distinct draft; ``evaluate_both`` after a passing weak
  side runs the strong side on the same round);
- ``write_note(text)``: ``agent.note``.

Each result goes back as a ``tool`` message and the loop continues until an example is
accepted, the rounds or another budget are spent, or the main agent stops calling tools
(after ``MAX_NUDGES`` reminders). If it ends without having evaluated anything, the harness
drafts and evaluates once itself (``FALLBACK_EVALUATE``) so that the document is not wasted.

Tool calls travel in one of two ways (``TOOL_MODE``): ``native`` sends OpenAI-style ``tools``
and reads ``Completion.tool_calls`` (vLLM, OpenAI, and llama.cpp's ``llama-server``, whose
Jinja chat templates are on by default); a reply that writes the call as text
(``<tool_call>{...}</tool_call>`` or a bare ``{"name", "arguments"}`` object, as small models
do) is parsed too. ``json`` asks for ``{"tool": ..., "args": {...}}`` through
``agent.llm_json`` with a schema (grammar-constrained on llama.cpp), for endpoints without tool
support. At the end the harness notes how many tool calls were valid.

The contract is documented in :mod:`inner.harness`. The meta loop mutates copies of this
directory; keep everything a mutation may need inside it.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from inner.contract import Challenge, FailureMode, QVVerdict, RoundRecord, render
from inner.errors import HarnessError

PROMPTS = Path(__file__).parent / "prompts"

# "native": OpenAI-style tools (Completion.tool_calls); "json": one JSON action per step
# through agent.llm_json (for endpoints that do not support `tools`).
TOOL_MODE = "native"
# Main-agent steps per document (each one LLM call).
MAX_STEPS = 14
# Reminders when the main agent replies without a tool call, before the loop ends.
MAX_NUDGES = 2
# Draft and evaluate once without the main agent if it ended without evaluating anything.
FALLBACK_EVALUATE = True
# Sections the main agent may read per document before it is told to draft.
MAX_READS = 3
# Characters of a section or of a tool result shown to the main agent.
SECTION_CHARS = 2500
RESULT_CHARS = 1500

TOOL_NAMES = ("read_section", "draft_challenge", "self_check", "evaluate_weak", "evaluate_both", "write_note")
#: the one argument of the tools that take one (a call that names it differently still works)
TOOL_PARAM = {"read_section": "heading", "draft_challenge": "focus", "write_note": "text"}


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": "string", "description": v} for k, v in params.items()},
                "required": list(params),
            },
        },
    }


TOOLS = [
    _tool("read_section", "Read one section of the document.", heading="the section heading, as listed"),
    _tool(
        "draft_challenge",
        "The challenger writes a new draft example about the focus (earlier evaluations are shown to it).",
        focus="the part of the document or the insight to ask about",
    ),
    _tool("self_check", "Check the current draft for context leaks, generic or multi-part questions, rubric gaps."),
    _tool("evaluate_weak", "Spend a round: only the weak solver (without the document) answers the current draft."),
    _tool("evaluate_both", "The weak and the strong solver answer the current draft and the gate decides."),
    _tool("write_note", "Keep a short note of what you learned.", text="the note"),
]


class ActionArgs(BaseModel):
    """Arguments of a JSON action (each tool reads the one it needs)."""

    heading: str = ""
    focus: str = ""
    text: str = ""


class Action(BaseModel):
    """One step in ``json`` mode: a tool and its arguments, or ``stop``."""

    tool: Literal[
        "read_section", "draft_challenge", "self_check", "evaluate_weak", "evaluate_both", "write_note", "stop"
    ]
    args: ActionArgs = ActionArgs()


class SelfCheck(BaseModel):
    """The quality checks, answered by the harness's own ``self_check`` role."""

    context_leak: bool
    generic: bool
    multi_part: bool
    rubric_covers_answer: bool
    reason: str = ""

    def verdict(self) -> QVVerdict:
        bad = self.context_leak or self.generic or self.multi_part or not self.rubric_covers_answer
        return QVVerdict(passed=not bad, reason=self.reason.strip() or ("passes" if not bad else "fails"))


class Orchestrator:
    """The tools and their state for one document."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.draft: Challenge | None = None
        self.verdict: QVVerdict | None = None
        self.done = False
        self.stats = {"calls": 0, "valid": 0, "invalid": 0, "text_parsed": 0, "no_call": 0}
        self.failures: list[str] = []
        self.reads = 0
        self.last_call: tuple[str, str] | None = None

    # -- tools --------------------------------------------------------------------------------
    async def read_section(self, heading: str = "", **_: Any) -> str:
        if self.reads >= MAX_READS:
            raise ToolError(f"you have read {MAX_READS} sections: call draft_challenge with a focus from them")
        self.reads += 1
        sections = self.agent.doc.sections()
        want = heading.strip().lower()
        for h, body in sections:
            if want and (h.lower() == want or want in h.lower()):
                return f"## {h}\n{body[:SECTION_CHARS]}"
        if want:
            hits = self.agent.doc.search(heading, window=SECTION_CHARS // 2, limit=1)
            if hits:
                return f"(no section {heading!r}; passage mentioning it)\n{hits[0]}"
        return f"no section {heading!r}; sections: {headings(self.agent)}"

    async def draft_challenge(self, focus: str = "", **_: Any) -> str:
        feedback = summarize_rounds(self.agent.rounds)
        block = f"## Earlier attempts (do not repeat them)\n{feedback}\n" if feedback else "Write the example now."
        messages = render(
            PROMPTS / "challenger.md",
            domain=self.agent.domain,
            document=self.agent.document("challenger"),
            focus=focus.strip() or "(your choice: the document's most specific insight)",
            feedback_block=block,
        )
        res = await self.agent.llm_json("challenger", messages, Challenge)
        if res.value is None:
            raise ToolError(f"the challenger's reply was unusable: {res.error}")
        self.draft, self.verdict = res.value, None
        return json.dumps(
            {"question": self.draft.question, "reference_answer": self.draft.reference_answer[:300],
             "rubric": [f"{c.id} (w{c.weight}): {c.criterion}" for c in self.draft.rubric]},
        )  # fmt: skip

    async def self_check(self, **_: Any) -> str:
        draft = await self._need_draft()
        messages = render(
            PROMPTS / "self_check.md",
            domain=self.agent.domain,
            document=self.agent.document("self_check"),
            context=draft.context,
            question=draft.question,
            reference_answer=draft.reference_answer,
            rubric="\n".join(f"- {c.id} (weight {c.weight}): {c.criterion}" for c in draft.rubric),
        )
        res = await self.agent.llm_json("self_check", messages, SelfCheck)
        if res.value is None:
            raise ToolError(f"the self-check reply was unusable: {res.error}")
        self.verdict = res.value.verdict()
        return f"{'PASSED' if self.verdict.passed else 'FAILED'}: {self.verdict.reason}"

    async def evaluate_weak(self, **_: Any) -> str:
        return await self._evaluate("weak")

    async def evaluate_both(self, **_: Any) -> str:
        return await self._evaluate("both")

    async def write_note(self, text: str = "", **_: Any) -> str:
        await self.agent.note(text)
        return "noted"

    async def note_stats(self, *, in_flight: int = 0) -> None:
        """Note how well the main agent called tools (best effort: the document may be over).
        ``in_flight``: a call being executed now, counted as valid (it parsed and dispatched)."""
        s = self.stats
        with contextlib.suppress(HarnessError):  # refused: the document is over (budget, acceptance)
            await self.agent.note(
                f"tool calls ({TOOL_MODE}): {s['valid'] + in_flight}/{s['calls']} valid, {s['text_parsed']} parsed from text, "
                f"{s['no_call']} replies without a call; failures: {'; '.join(self.failures[:3]) or 'none'}"
            )

    async def _need_draft(self) -> Challenge:
        if self.draft is None:  # forgiving: a small model often evaluates before drafting
            await self.draft_challenge("")
        assert self.draft is not None
        return self.draft

    async def _evaluate(self, side: str) -> str:
        draft = await self._need_draft()
        if side == "both":  # an accepted report ends the document at once: note the tool-call counts first
            await self.note_stats(
                in_flight=1 if self.stats["calls"] > self.stats["valid"] + self.stats["invalid"] else 0
            )
        report = await self.agent.evaluate(draft, side=side, self_check=self.verdict)
        pending = any(r.failure_mode is FailureMode.WEAK_PASSED for r in self.agent.rounds)
        if report.accepted or (len(self.agent.rounds) >= self.agent.max_rounds and not pending):
            self.done = True
        return describe(report, self.agent.max_rounds - len(self.agent.rounds))

    # -- dispatch -----------------------------------------------------------------------------
    async def call(self, name: str, arguments: Any) -> str:
        """Run one tool call; a bad call is answered with the error, never raised."""
        self.stats["calls"] += 1
        try:
            if name not in TOOL_NAMES:
                raise ToolError(f"unknown tool {name!r}; the tools are {', '.join(TOOL_NAMES)}")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError as exc:
                    raise ToolError(f"the arguments are not valid JSON: {exc}") from exc
            if not isinstance(arguments, dict):
                raise ToolError("the arguments must be a JSON object")
            param = TOOL_PARAM.get(name)
            if param and param not in arguments and arguments:
                arguments = {param: next(iter(arguments.values()))}
            if not param:
                arguments = {}
            args = {k: str(v) for k, v in arguments.items()}
            this = (name, json.dumps(args, sort_keys=True))
            if this == self.last_call and name in ("read_section", "self_check", "write_note"):
                raise ToolError(f"you just called {name} with these arguments; {NEXT[name]}")
            self.last_call = this
            result = await getattr(self, name)(**args)
            if name in NEXT and name not in ("evaluate_weak", "evaluate_both"):  # reports carry their own hint
                result = f"{result[: RESULT_CHARS - 120]}\nNext: {NEXT[name]}"
        except ToolError as exc:
            self.stats["invalid"] += 1
            self.failures.append(str(exc)[:120])
            return f"error: {exc}"
        self.stats["valid"] += 1
        return result[:RESULT_CHARS]


#: the usual next step after each tool, appended to its result (small models need the nudge)
NEXT = {
    "read_section": "call draft_challenge with a focus taken from this section.",
    "draft_challenge": "call self_check, then evaluate_weak.",
    "self_check": "if it PASSED call evaluate_weak; if it FAILED call draft_challenge with another focus.",
    "write_note": "continue with draft_challenge or evaluate_weak.",
}


class ToolError(Exception):
    """A tool call the harness answers with an error message (bad name, arguments, output)."""


def headings(agent: Any) -> str:
    hs = [h for h, _ in agent.doc.sections() if h]
    return "; ".join(hs[:30]) if hs else "(no headings: use read_section with a phrase from the title)"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def describe(r: RoundRecord, rounds_left: int) -> str:
    """The evaluator's report as the main agent reads it."""
    parts = [f"round {r.round} ({r.side}): {r.failure_mode.value}"]
    if r.weak_avg is not None:
        parts.append(f"weak avg {_fmt(r.weak_avg)}")
    if r.strong_avg is not None:
        parts.append(f"strong avg {_fmt(r.strong_avg)}, gap {_fmt(r.gap)}")
    if r.qv is not None and not r.qv.passed:
        parts.append(f"quality check: {r.qv.reason}")
    if r.reasons:
        parts.append("; ".join(r.reasons)[:400])
    hint = {
        FailureMode.ACCEPTED: "accepted: the document is done.",
        FailureMode.WEAK_PASSED: "the weak side passes: call evaluate_both on this draft.",
        FailureMode.TOO_EASY: "too easy: draft again with a more document-specific focus.",
        FailureMode.WEAK_ZERO: "the weak solver scored 0: the question may be unclear; draft again.",
        FailureMode.FAILED_STRONG: "the strong solver failed: draft a clearer question answerable from the document.",
        FailureMode.FAILED_QV: "rejected by the quality check: draft again avoiding the problem.",
        FailureMode.INVALID_CHALLENGE: "the rubric breaks the rubric policy: draft again.",
    }.get(r.failure_mode, "")
    return " | ".join(parts) + f" | {hint} Rounds left: {rounds_left}."


def summarize_rounds(rounds: list[RoundRecord]) -> str:
    """Earlier evaluations, one line each, for the challenger."""
    lines = []
    for r in rounds:
        q = r.challenge.question if r.challenge else "(none)"
        lines.append(f'- "{q}": {describe(r, 0).split(" | Rounds left")[0]}')
    return "\n".join(lines)


_TAGGED = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def calls_from_text(text: str) -> list[dict[str, Any]]:
    """Tool calls a model wrote as text: ``<tool_call>{"name", "arguments"}</tool_call>`` (the
    Hermes/Qwen format) or one bare JSON object with ``name`` (or ``tool``) and arguments."""
    blobs = _TAGGED.findall(text or "")
    if not blobs:
        start, end = (text or "").find("{"), (text or "").rfind("}")
        blobs = [text[start : end + 1]] if 0 <= start < end else []
    calls = []
    for i, blob in enumerate(blobs):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        name = obj.get("name") or obj.get("tool")
        if isinstance(name, str):
            args = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
            calls.append({"id": f"text_{i}", "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args if args is not None else {})}})  # fmt: skip
    return calls


async def run(agent) -> None:
    """The tool-calling loop (module docstring)."""
    orch = Orchestrator(agent)
    messages = render(
        PROMPTS / "main_agent.md",
        domain=agent.domain,
        title=agent.doc.title,
        sections=headings(agent),
        max_rounds=agent.max_rounds,
    )
    step = nudges = 0
    try:
        while not orch.done and step < MAX_STEPS:
            step += 1
            if TOOL_MODE == "json":
                stopped = await _json_step(agent, orch, messages)
            else:
                stopped = await _native_step(agent, orch, messages)
            if stopped:
                orch.stats["no_call"] += 1
                if nudges >= MAX_NUDGES:
                    break
                nudges += 1
                messages.append(
                    {"role": "user", "content": "Call one of the tools now (e.g. draft_challenge, then evaluate_weak)."}
                )
        if FALLBACK_EVALUATE and not agent.rounds and not orch.done:
            await agent.note("the main agent evaluated nothing: drafting and evaluating once without it")
            await orch.evaluate_both()
    finally:
        await orch.note_stats()


async def _native_step(agent: Any, orch: Orchestrator, messages: list[dict[str, Any]]) -> bool:
    """One main-agent step with OpenAI-style tools; returns True if it called no tool."""
    comp = await agent.llm("main_agent", messages, tools=TOOLS)
    calls = comp.tool_calls or []
    if not calls:
        calls = calls_from_text(comp.text)
        orch.stats["text_parsed"] += len(calls)
    if not calls:
        messages.append({"role": "assistant", "content": comp.text})
        return True
    messages.append({"role": "assistant", "content": comp.text or "", "tool_calls": calls})
    for call in calls:
        fn = call.get("function", {})
        result = await orch.call(str(fn.get("name")), fn.get("arguments", "{}"))
        messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": result})
        if orch.done:
            break
    return False


async def _json_step(agent: Any, orch: Orchestrator, messages: list[dict[str, Any]]) -> bool:
    """One main-agent step as a JSON action; returns True if it chose ``stop`` or was unusable."""
    if len(messages) == 2 and "JSON" not in messages[0]["content"]:
        messages[0] = {
            "role": "system",
            "content": messages[0]["content"] + '\n\nReply with only a JSON object {"tool": NAME, "args": '
            '{"heading": ..., "focus": ..., "text": ...}} (the arguments the tool needs), or {"tool": "stop"}.',
        }
    res = await agent.llm_json("main_agent", messages, Action)
    if res.value is None:
        orch.stats["calls"] += 1
        orch.stats["invalid"] += 1
        orch.failures.append(f"unusable action: {str(res.error)[:100]}")
        messages.append({"role": "assistant", "content": res.raw[-1] if res.raw else ""})
        return True
    if res.value.tool == "stop":
        messages.append({"role": "assistant", "content": res.value.model_dump_json()})
        return True
    messages.append({"role": "assistant", "content": res.value.model_dump_json()})
    result = await orch.call(res.value.tool, res.value.args.model_dump())
    messages.append({"role": "user", "content": f"Result of {res.value.tool}: {result}"})
    return False
