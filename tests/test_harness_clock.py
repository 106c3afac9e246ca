"""The harness's wall-clock limit (``inner.harness_wall_s``) counts the harness's own time,
not the parent's: time inside ``evaluate`` and time its LLM calls are in flight (queued in or
decoded by a loaded server) are excluded, so a slow server cannot turn into harness crashes;
time the harness spends itself still counts."""

from __future__ import annotations

from typing import Any

from tests.conftest import scenario
from tests.scripted_server import Reply
from tests.test_hostile import ACCEPT, generate, make_harness

#: seconds each challenger call waits in the scripted server, and the harness's limit: the
#: limit leaves room for a slow sandbox start on a loaded machine (its start counts)
SLOW_S = 2.5
WALL_S = 7


class SlowChallenger:
    """The scenario's replies, the challenger's delayed by ``delay_s`` (a loaded server)."""

    def __init__(self, delay_s: float) -> None:
        self.scen = scenario(ACCEPT)
        self.delay_s = delay_s

    def __call__(self, role: str, body: dict[str, Any]) -> Reply | str | dict[str, Any]:
        out = self.scen(role, body)
        if role != "challenger":
            return out
        if isinstance(out, Reply):
            out.delay_s += self.delay_s
            return out
        return Reply(content=out, delay_s=self.delay_s)


def test_slow_llm_calls_do_not_count_against_the_wall_clock_limit(make_cfg, server, tmp_path):
    # three sequential challenger calls, three concurrent ones, then a round: 5 x 2.5 s of
    # waiting on the server against a 7 s limit
    h = make_harness(
        tmp_path,
        "patient",
        """
        async def run(agent):
            for i in range(3):
                await agent.llm("challenger", prompt(agent, f" call {i}"))
            await asyncio.gather(*(agent.llm("challenger", prompt(agent, f" batch {i}")) for i in range(3)))
            left = (await agent.budget())["seconds"]
            await agent.note(f"seconds left: {left}")
            await honest(agent)
        """,
    )
    srv = server(SlowChallenger(SLOW_S))
    _, trajs = generate(make_cfg, srv, tmp_path / "run", h, f"inner.harness_wall_s={WALL_S}", "task.limit=1")
    t = trajs["MARK-A"]
    assert t.status == "accepted", (t.status, t.end_reason)
    assert srv.count("challenger") == 7
    assert t.wall_s > 4 * SLOW_S > WALL_S  # the document really took longer than the limit
    (note,) = [e.text for e in t.events if e.kind == "note"]
    assert float(note.split(": ")[1]) > 0  # the budget the harness sees agrees (without: 7 - 10 s)


def test_the_harness_own_time_between_calls_still_counts(make_cfg, server, tmp_path):
    h = make_harness(
        tmp_path,
        "sleeper",
        """
        async def run(agent):
            await agent.llm("challenger", prompt(agent))
            await asyncio.sleep(3600)
        """,
    )
    srv = server(SlowChallenger(SLOW_S))
    _, trajs = generate(make_cfg, srv, tmp_path / "run", h, f"inner.harness_wall_s={WALL_S}", "task.limit=1")
    t = trajs["MARK-A"]
    assert t.status == "crashed"
    assert t.end_reason == f"the harness exceeded its wall-clock limit of {WALL_S} s (inner.harness_wall_s)"
    assert WALL_S + SLOW_S <= t.wall_s < WALL_S + SLOW_S + 5  # the call's time excluded, no more
