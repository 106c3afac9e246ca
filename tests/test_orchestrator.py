"""The orchestrator harness (harnesses/orchestrator): an LLM main agent that calls tools, and
the client's tool-call support it rests on, through the real client and the scripted server."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

from inner.config import EndpointConfig, LLMConfig
from inner.engine.harness import HARNESSES_DIR
from inner.engine.records import RunWriter
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient
from tests.conftest import run
from tests.helpers.conformance import ACCEPT, ConformanceScenario
from tests.scripted_server import Reply

TOOL = [{"type": "function", "function": {"name": "ping", "description": "ping", "parameters": {"type": "object"}}}]


def call(name: str, args: Any, i: int = 0) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}


def test_client_sends_tools_and_returns_cached_tool_calls(server, tmp_path):
    srv = server(lambda role, body: Reply(tool_calls=[call("ping", {"x": 1})]))
    cfg = LLMConfig(endpoints={"default": EndpointConfig(base_url=srv.base_url, max_retries=0)})

    async def go() -> list[Any]:
        client = LLMClient(cfg, cache=ResponseCache(tmp_path / "cache"))
        msgs = [{"role": "user", "content": "ping please"}]
        try:
            first = await client.complete("main_agent", msgs, tools=TOOL)
            again = await client.complete("main_agent", msgs, tools=TOOL)
            return [first, again]
        finally:
            await client.aclose()

    first, again = asyncio.run(go())
    (body,) = [b for _, b in srv.requests]
    assert body["tools"] == TOOL and body["tool_choice"] == "auto"
    # a reply with tool calls and no text is a completion, not an empty-reply failure
    assert first.text == "" and first.finish_reason == "tool_calls"
    assert first.tool_calls == [call("ping", '{"x": 1}')]  # arguments as the JSON string sent
    assert again.cached and again.tool_calls == first.tool_calls  # tools are part of the cache key


def test_client_without_tools_sends_none(server):
    srv = server(lambda role, body: "plain text")
    cfg = LLMConfig(endpoints={"default": EndpointConfig(base_url=srv.base_url, max_retries=0)})

    async def go() -> Any:
        client = LLMClient(cfg)
        try:
            return await client.complete("main_agent", [{"role": "user", "content": "hi"}])
        finally:
            await client.aclose()

    comp = asyncio.run(go())
    assert comp.text == "plain text" and comp.tool_calls is None
    assert "tools" not in srv.requests[0][1] and "tool_choice" not in srv.requests[0][1]


class ScriptedMainAgent(ConformanceScenario):
    """The main agent's replies come from a list (the last repeats); other roles as in the
    conformance scenario."""

    def __init__(self, replies: list[Any]) -> None:
        super().__init__({"*": [ACCEPT]})
        self.replies = replies
        self.main_calls = 0

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        if role == "main_agent":
            with self._lock:
                self.main_calls += 1
                k = self.main_calls
            return self.replies[min(k, len(self.replies)) - 1]
        return super().__call__(role, body)


def one_doc(make_cfg, *extra: str):
    return make_cfg(
        "harness=orchestrator", "inner.max_rounds=2", "task.limit=1", "inner.n_weak=1", "inner.n_strong=1", *extra
    )


def notes(run_dir) -> list[str]:
    (traj,) = RunWriter(run_dir).load_trajectories()
    return [e.text for e in traj.events if e.kind == "note"]


def test_native_tool_calls_end_to_end(make_cfg, server, tmp_path):
    scen = ConformanceScenario({"*": [ACCEPT]})
    srv = server(scen)
    stats = run(one_doc(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    assert scen.tool_calls_sent == ["read_section", "draft_challenge", "self_check", "evaluate_weak", "evaluate_both"]
    bodies = [b for r, b in srv.requests if r == "main_agent"]
    assert len(bodies) == 5 and all(b["tools"] and b["tool_choice"] == "auto" for b in bodies)
    names = [t["function"]["name"] for t in bodies[0]["tools"]]
    assert names == ["read_section", "draft_challenge", "self_check", "evaluate_weak", "evaluate_both", "write_note"]
    # each call went back as an assistant message with tool_calls and a tool message with its id
    msgs = bodies[-1]["messages"]
    asked = [m["tool_calls"][0]["id"] for m in msgs if m.get("tool_calls")]
    answered = [m["tool_call_id"] for m in msgs if m["role"] == "tool"]
    assert asked == answered == ["call_1", "call_2", "call_3", "call_4"]
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    assert results[0].startswith("## Title: Paper MARK-A") and "QMARK-A r1" in results[1]
    assert results[0].endswith("Next: call draft_challenge with a focus taken from this section.")
    assert results[2].startswith("PASSED") and "WEAK_PASSED" in results[3]
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    assert traj.rounds[0].side == "both" and traj.rounds[0].self_check is not None
    assert any(
        n.startswith("tool calls (native): 5/5 valid, 0 parsed from text, 0 replies") for n in notes(tmp_path / "run")
    )


def test_bad_tool_calls_are_answered_and_text_calls_parsed(make_cfg, server, tmp_path):
    replies = [
        Reply(tool_calls=[call("fly", {})]),
        Reply(tool_calls=[call("read_section", "{not json", 1)]),
        '<tool_call>\n{"name": "draft_challenge", "arguments": {"focus": "the result"}}\n</tool_call>',
        Reply(tool_calls=[call("evaluate_both", {}, 3)]),
    ]
    srv = server(ScriptedMainAgent(replies))
    stats = run(one_doc(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    msgs = [b for r, b in srv.requests if r == "main_agent"][-1]["messages"]
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    assert results[0].startswith("error: unknown tool 'fly'")
    assert results[1].startswith("error: the arguments are not valid JSON")
    draft, hint = results[2].split("\nNext: ")
    assert json.loads(draft)["question"] == "QMARK-A r1" and hint.startswith("call self_check")
    focus = [b for r, b in srv.requests if r == "challenger"][0]["messages"][1]["content"]
    assert "## Focus\nthe result" in focus
    assert any(n.startswith("tool calls (native): 2/4 valid, 1 parsed from text") for n in notes(tmp_path / "run"))


def test_main_agent_without_tool_calls_is_nudged_then_the_harness_falls_back(make_cfg, server, tmp_path):
    srv = server(ScriptedMainAgent(["I think the paper is interesting."]))
    stats = run(one_doc(make_cfg), tmp_path / "run", srv)
    assert srv.count("main_agent") == 3  # the first reply + MAX_NUDGES reminders
    assert stats["accepted"] == 1  # FALLBACK_EVALUATE: drafted and evaluated once without it
    texts = notes(tmp_path / "run")
    assert any("evaluated nothing" in n for n in texts)
    assert any(n.startswith("tool calls (native): 0/0 valid, 0 parsed from text, 3 replies without") for n in texts)


def test_json_action_mode_for_endpoints_without_tools(make_cfg, server, tmp_path):
    h = tmp_path / "orchestrator_json"
    shutil.copytree(HARNESSES_DIR / "orchestrator", h, ignore=shutil.ignore_patterns("__pycache__"))
    code = (h / "harness.py").read_text()
    assert 'TOOL_MODE = "native"' in code
    (h / "harness.py").write_text(code.replace('TOOL_MODE = "native"', 'TOOL_MODE = "json"'))
    replies = [
        {"tool": "draft_challenge", "args": {"focus": "the mechanism"}},
        {"tool": "evaluate_weak", "args": {}},
        {"tool": "evaluate_both", "args": {}},
    ]
    srv = server(ScriptedMainAgent(replies))
    stats = run(one_doc(make_cfg, f"harness={h}"), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    bodies = [b for r, b in srv.requests if r == "main_agent"]
    assert len(bodies) == 3 and not any("tools" in b for b in bodies)
    schema = bodies[0]["response_format"]["schema"]
    assert "stop" in schema["properties"]["tool"]["enum"]
    assert bodies[-1]["messages"][-1]["content"].startswith("Result of evaluate_weak: round 1 (weak): WEAK_PASSED")
    assert any(n.startswith("tool calls (json): 3/3 valid") for n in notes(tmp_path / "run"))


def test_repeated_and_excess_reads_are_refused_with_the_next_step(make_cfg, server, tmp_path):
    """A small model loops on read_section: the repeat and the fourth read are answered with
    the next step instead of being executed."""
    read = [Reply(tool_calls=[call("read_section", {"heading": h}, i)]) for i, h in enumerate("AABCD")]
    srv = server(ScriptedMainAgent([*read, Reply(tool_calls=[call("evaluate_both", {}, 9)])]))
    stats = run(one_doc(make_cfg), tmp_path / "run", srv)
    assert stats["accepted"] == 1
    msgs = [b for r, b in srv.requests if r == "main_agent"][-1]["messages"]
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    assert results[1].startswith("error: you just called read_section with these arguments; call draft_challenge")
    assert not results[2].startswith("error") and not results[3].startswith("error")
    assert results[4] == "error: you have read 3 sections: call draft_challenge with a focus from them"
