"""Rewards for GRPO: the rubric judge and exact-answer equivalence, as TRL reward functions.

TRL's ``GRPOTrainer`` (trl >= 1.16) calls each reward function as
``f(prompts=..., completions=..., completion_ids=..., **columns)`` where ``columns`` are the
dataset's other columns, one value per completion, plus ``trainer_state``, ``log_extra`` and
``log_metric``. It awaits ``async`` reward functions itself, all of them together on one
daemon event loop (``GRPOTrainer._calculate_rewards``), so :class:`RubricReward` is a plain
``async`` callable and needs no wrapper. A reward of ``None`` means "not applicable to this
completion": TRL leaves it out of the sum (and a completion with no applicable reward gets an
advantage of 0).

- :class:`RubricReward` (rubric examples, ``verifiable`` false): the frozen judge grades the
  completion against the example's own rubric with the same prompt and scoring formula as the
  inner evaluator (:func:`inner.evaluator.roles.judge_answer` -> :func:`inner.evaluator.scoring.rubric_score`),
  through the project's :class:`~inner.llm.client.LLMClient` (role ``judge``: in-flight limits,
  retries, response cache, usage counted per role). Reward in [0, 1]; ``None`` for exact-answer
  rows and when the judge's output stays unusable.
- :class:`VerifiableReward` (``verifiable`` true): 1.0 if the final answer
  (:func:`inner.evaluator.answers.extract_final_answer`) is equivalent to the reference
  (:func:`inner.evaluator.answers.answers_equivalent`: math-verify, else normalized match), else 0.0;
  ``None`` for rubric rows.

A completion cut at the length limit (its last token is not a stop token, or the caller says it
was truncated) gets reward 0.0 from either function, without a judge call: an unfinished answer
has no final answer, and rewarding its partial content would teach the policy to ramble. Each
call reports ``<name>/truncated`` (fraction of its applicable completions) and, for the judge,
``rubric_reward/judge_failures`` through TRL's ``log_metric``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inner.engine.records import RubricItem
from inner.evaluator.answers import answers_equivalent, extract_final_answer
from inner.evaluator.roles import judge_answer
from inner.sdk.errors import LLMCallError

log = logging.getLogger(__name__)

#: Reward of a completion cut at the length limit.
TRUNCATED_REWARD = 0.0


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string (standard format) or a list of chat messages
    (conversational format; the assistant contents are joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "".join(
            m.get("content") or ""
            for m in completion
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        )
    raise TypeError(f"a completion must be a string or a list of chat messages, not {type(completion).__name__}")


def truncation_flags(
    n: int,
    *,
    completion_ids: Sequence[Sequence[int]] | None,
    stop_token_ids: Sequence[int],
    truncated: Sequence[bool] | None = None,
) -> list[bool]:
    """Which of ``n`` completions were cut at the length limit.

    ``truncated`` (one flag per completion, e.g. from an OpenAI ``finish_reason == "length"``)
    wins when given; otherwise a completion is truncated when its last token id is not one of
    ``stop_token_ids`` (the rule of TRL's ``completions/clipped_ratio``); with neither, none is.

    Raises:
        ValueError: a list has the wrong length.
    """
    if truncated is not None:
        if len(truncated) != n:
            raise ValueError(f"truncated has {len(truncated)} flags for {n} completions")
        return [bool(t) for t in truncated]
    if completion_ids is None or not stop_token_ids:
        return [False] * n
    if len(completion_ids) != n:
        raise ValueError(f"completion_ids has {len(completion_ids)} entries for {n} completions")
    stops = set(stop_token_ids)
    return [not ids or ids[-1] not in stops for ids in completion_ids]


def _column(columns: dict[str, Any], name: str, n: int) -> list[Any]:
    if name not in columns:
        raise KeyError(f"the dataset has no {name!r} column: train on an autodata-export-dataset export")
    values = list(columns[name])
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def _rubric(items: Any) -> list[RubricItem]:
    return [it if isinstance(it, RubricItem) else RubricItem.model_validate(dict(it)) for it in items]


@dataclass
class RewardTally:
    """Running counts of one reward function (for logs and tests).

    Attributes:
        scored: completions it scored (judge verdict or equivalence check).
        truncated: completions it gave 0 for being cut at the length limit.
        skipped: completions it does not apply to (reward ``None``).
        failures: judge outputs unusable or judge requests failed (reward ``None``).
    """

    scored: int = 0
    truncated: int = 0
    skipped: int = 0
    failures: int = 0
    rewards: list[float] = field(default_factory=list)


class _Base:
    #: TRL reads ``__name__`` for metric names (``rewards/<name>/mean``)
    __name__ = "reward"

    def __init__(self, *, stop_token_ids: Sequence[int] = ()) -> None:
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self.tally = RewardTally()

    def _report(self, log_metric: Callable[[str, float], None] | None, applicable: int, truncated: int) -> None:
        if log_metric is not None and applicable:
            log_metric(f"{self.__name__}/truncated", truncated / applicable)


class VerifiableReward(_Base):
    """Exact-answer reward (sync): 1.0 if the final answer is equivalent to
    ``reference_answer``, 0.0 if not or if the completion was truncated; ``None`` for rows whose
    ``verifiable`` column is false.

    Args:
        stop_token_ids: token ids that end a finished completion (EOS, end of turn, pad).
    """

    __name__ = "verifiable_reward"

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        *,
        truncated: list[bool] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        n = len(completions)
        verifiable = _column(columns, "verifiable", n)
        refs = _column(columns, "reference_answer", n)
        cut = truncation_flags(
            n, completion_ids=completion_ids, stop_token_ids=self.stop_token_ids, truncated=truncated
        )
        out: list[float | None] = []
        applicable = n_cut = 0
        for c, v, ref, t in zip(completions, verifiable, refs, cut, strict=True):
            if not v:
                out.append(None)
                self.tally.skipped += 1
                continue
            applicable += 1
            if t:
                n_cut += 1
                self.tally.truncated += 1
                out.append(TRUNCATED_REWARD)
                continue
            ok = answers_equivalent(extract_final_answer(completion_text(c)), str(ref))
            self.tally.scored += 1
            out.append(1.0 if ok else 0.0)
        self.tally.rewards.extend(r for r in out if r is not None)
        self._report(log_metric, applicable, n_cut)
        return out


class RubricReward(_Base):
    """Rubric reward (async): the frozen judge's :func:`~inner.evaluator.scoring.rubric_score` of the
    completion against the row's ``rubric``, given its ``context`` and ``question``; 0.0 for a
    truncated completion (no judge call); ``None`` for exact-answer rows and when the judge
    output is unusable or the request fails after retries.

    Args:
        client: an :class:`~inner.llm.client.LLMClient` whose ``judge`` role is configured
            (or a zero-argument callable returning one, called on first use, so the client is
            created on the event loop that runs the reward).
        stop_token_ids: token ids that end a finished completion.
        partial_credit: allow 0.5 verdicts (``rubric.partial_credit``; default binary).
        retries: further judge attempts (new sample index) when its output is unusable.

    Raises:
        LLMCallError: every judge request of one call failed (the judge is down); a single
            failed request only makes that completion's reward ``None``.
    """

    __name__ = "rubric_reward"

    def __init__(
        self,
        client: Any,
        *,
        stop_token_ids: Sequence[int] = (),
        partial_credit: bool = False,
        retries: int = 1,
    ) -> None:
        super().__init__(stop_token_ids=stop_token_ids)
        self._client = client
        self.partial_credit = partial_credit
        self.retries = retries

    @property
    def client(self) -> Any:
        if callable(self._client) and not hasattr(self._client, "complete_json"):
            self._client = self._client()
        return self._client

    async def _grade(self, text: str, context: str, question: str, rubric: list[RubricItem]) -> float | None:
        try:
            verdict = await judge_answer(
                self.client,
                context=context,
                question=question,
                rubric=rubric,
                answer=text,
                partial_credit=self.partial_credit,
                retries=self.retries,
            )
        except LLMCallError as exc:
            log.warning("judge request failed: %s", exc)
            self.tally.failures += 1
            raise
        if verdict.score is None:
            log.warning("judge output unusable: %s", verdict.error)
            self.tally.failures += 1
            return None
        self.tally.scored += 1
        return verdict.score

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        *,
        truncated: list[bool] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        n = len(completions)
        verifiable = _column(columns, "verifiable", n)
        contexts = _column(columns, "context", n)
        questions = _column(columns, "question", n)
        rubrics = _column(columns, "rubric", n)
        cut = truncation_flags(
            n, completion_ids=completion_ids, stop_token_ids=self.stop_token_ids, truncated=truncated
        )
        out: list[float | None] = [None] * n
        jobs: dict[int, Any] = {}
        n_cut = 0
        for i in range(n):
            if verifiable[i]:
                self.tally.skipped += 1
            elif cut[i]:
                n_cut += 1
                self.tally.truncated += 1
                out[i] = TRUNCATED_REWARD
            else:
                jobs[i] = self._grade(completion_text(completions[i]), contexts[i], questions[i], _rubric(rubrics[i]))
        failures_before = self.tally.failures
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for i, r in zip(jobs, results, strict=True):
            out[i] = None if isinstance(r, BaseException) else r
        if jobs and len(errors) == len(jobs) and all(isinstance(e, LLMCallError) for e in errors):
            raise errors[0]
        for e in errors:
            if not isinstance(e, LLMCallError):
                raise e
        applicable = n_cut + len(jobs)
        self.tally.rewards.extend(r for r in out if r is not None)
        self._report(log_metric, applicable, n_cut)
        if log_metric is not None and jobs:
            log_metric(f"{self.__name__}/judge_failures", (self.tally.failures - failures_before) / len(jobs))
        return out


class LocalOverlapReward(_Base):
    """A judge-free reward for benchmarks on machines with no judge server (not a training
    signal worth using): the fraction of the reference answer's distinct words (lower-cased,
    3+ letters) that the completion contains, in [0, 1]; 0.0 for a truncated completion."""

    __name__ = "overlap_reward"

    def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]] | None = None,
        *,
        truncated: list[bool] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        import re

        n = len(completions)
        refs = _column(columns, "reference_answer", n)
        cut = truncation_flags(
            n, completion_ids=completion_ids, stop_token_ids=self.stop_token_ids, truncated=truncated
        )
        out: list[float | None] = []
        for c, ref, t in zip(completions, refs, cut, strict=True):
            if t:
                out.append(TRUNCATED_REWARD)
                continue
            want = set(re.findall(r"[a-z]{3,}", str(ref).lower()))
            have = set(re.findall(r"[a-z]{3,}", completion_text(c).lower()))
            out.append(len(want & have) / len(want) if want else 0.0)
        self._report(log_metric, n, sum(cut))
        return out
