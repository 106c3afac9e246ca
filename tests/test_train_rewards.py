"""Reward arithmetic against hand-computed values, through the real LLM client and a scripted
judge on loopback: pitfalls, clipping, truncation, exact answers, unusable judge output."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.train import judge_script, train_config
from tests.scripted_server import Reply

pytestmark = pytest.mark.train

RUBRIC = [
    {"id": "c1", "criterion": "names the mechanism", "weight": 3},
    {"id": "c2", "criterion": "gives the number", "weight": 2},
    {"id": "p1", "criterion": "confuses cause and effect", "weight": -4},
]


def judge_client(srv: Any, tmp_path: Path) -> Any:
    from train.judge import build_judge_client

    cfg = train_config("llm.endpoints.default.timeout_s=5")
    return build_judge_client(cfg.llm, run_dir=tmp_path / "judge", base_urls={"default": srv.base_url})


def columns(n: int, *, verifiable: list[bool] | None = None, reference: str = "ref") -> dict[str, list[Any]]:
    return {
        "context": ["A setting."] * n,
        "question": ["Why?"] * n,
        "rubric": [RUBRIC] * n,
        "reference_answer": [reference] * n,
        "verifiable": verifiable or [False] * n,
    }


def test_rubric_reward_matches_hand_computed_scores_with_pitfalls(server, tmp_path):
    from train.rewards import RubricReward

    srv = server(judge_script)
    client = judge_client(srv, tmp_path)
    reward = RubricReward(client)
    answers = [
        "<c1> <c2>",  # (3 + 2) / 5 = 1.0
        "<c1>",  # 3 / 5 = 0.6
        "<c2> <p1>",  # (2 - 4) / 5 -> clipped to 0.0
        "<c1> <c2> <p1>",  # (5 - 4) / 5 = 0.2
        "<c1> <p1>",  # (3 - 4) / 5 -> 0.0
    ]
    completions = [[{"role": "assistant", "content": a}] for a in answers]  # conversational format
    metrics: dict[str, float] = {}

    async def go() -> list[float | None]:
        try:
            return await reward(
                [[{"role": "user", "content": "q"}]] * 5, completions, log_metric=metrics.__setitem__, **columns(5)
            )
        finally:
            await client.aclose()

    got = asyncio.run(go())
    assert got == pytest.approx([1.0, 0.6, 0.0, 0.2, 0.0])
    assert srv.count("judge") == 5
    assert metrics["rubric_reward/truncated"] == 0.0 and metrics["rubric_reward/judge_failures"] == 0.0
    assert client.usage.roles["judge"].calls == 5  # counted per role by the project's client
    assert (tmp_path / "judge" / "calls.jsonl").is_file()


def test_truncated_and_verifiable_rows_never_reach_the_judge(server, tmp_path):
    from train.rewards import RubricReward, VerifiableReward

    srv = server(judge_script)
    client = judge_client(srv, tmp_path)
    eos = 7
    rubric_r, verif_r = RubricReward(client, stop_token_ids=[eos]), VerifiableReward(stop_token_ids=[eos])
    texts = ["<c1> <c2>", "<c1> <c2>", "Reasoning.\nFinal answer: 1/2", "Final answer: 1/2", "Final answer: 3"]
    ids = [[1, 2, eos], [1, 2, 3], [4, eos], [4, 5], [6, eos]]  # 2nd and 4th hit the length limit
    cols = columns(5, verifiable=[False, False, True, True, True], reference="0.5")
    metrics: dict[str, float] = {}

    async def go() -> list[float | None]:
        try:
            return await rubric_r([None] * 5, texts, ids, log_metric=metrics.__setitem__, **cols)
        finally:
            await client.aclose()

    rub = asyncio.run(go())
    ver = verif_r([None] * 5, texts, ids, log_metric=metrics.__setitem__, **cols)
    assert rub == [1.0, 0.0, None, None, None]
    assert ver == [None, None, 1.0, 0.0, 0.0]  # 1/2 == 0.5 by math-verify; truncated -> 0; 3 != 0.5
    assert srv.count("judge") == 1  # only the finished rubric answer was judged
    assert metrics["rubric_reward/truncated"] == 0.5 and metrics["verifiable_reward/truncated"] == pytest.approx(1 / 3)
    assert rubric_r.tally.truncated == 1 and verif_r.tally.truncated == 1 and verif_r.tally.scored == 2


def test_unusable_judge_output_is_none_and_a_dead_judge_raises(server, tmp_path):
    from inner.sdk.errors import LLMCallError
    from train.rewards import RubricReward

    srv = server(judge_script)
    client = judge_client(srv, tmp_path)
    reward = RubricReward(client, retries=1)

    async def go() -> list[float | None]:
        try:
            return await reward([None] * 2, ["GARBAGE", "<c1>"], **columns(2))
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [None, pytest.approx(0.6)]
    assert reward.tally.failures == 1
    # one request plus one repair per attempt, two attempts (retries=1)
    assert srv.count("judge") == 1 + 4

    dead = server(lambda role, body: Reply(status=500))
    client2 = judge_client(dead, tmp_path / "2")
    reward2 = RubricReward(client2)

    async def go2() -> None:
        try:
            await reward2([None], ["<c1>"], **columns(1))
        finally:
            await client2.aclose()

    with pytest.raises(LLMCallError):
        asyncio.run(go2())


def test_truncation_flags_and_missing_columns():
    from train.rewards import VerifiableReward, completion_text, truncation_flags

    assert truncation_flags(3, completion_ids=[[1, 9], [1, 2], []], stop_token_ids=[9]) == [False, True, True]
    assert truncation_flags(2, completion_ids=[[1], [2]], stop_token_ids=[9], truncated=[False, True]) == [False, True]
    assert truncation_flags(2, completion_ids=None, stop_token_ids=[9]) == [False, False]
    with pytest.raises(ValueError, match="2 flags for 3"):
        truncation_flags(3, completion_ids=None, stop_token_ids=[], truncated=[True, False])
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    with pytest.raises(KeyError, match="verifiable"):
        VerifiableReward()([None], ["x"], reference_answer=["x"])
