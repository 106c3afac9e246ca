"""The analyzer and the implementer: the two LLM roles of the meta loop.

- :func:`analyze` reads the parent harness's full trajectories on a training minibatch
  (questions, contexts, solver answers, per-criterion grades, failure modes) and a summary of
  the history, and writes a root-cause analysis of systematic failure patterns
  (``meta/prompts/analyzer.md``).
- :func:`implement` turns the analysis, the history and the harness's current files into
  SEARCH/REPLACE edits of its code and prompts (``meta/prompts/implementer.md``; format in
  :mod:`meta.edit`). The prompt carries the harness contract and the ``agent`` API, rendered
  from the docstring of :mod:`inner.engine.harness` (one source of truth). An edit that fails to apply
  or to validate is sent back once with the error (``repair``).

Both use the ``analyzer`` / ``implementer`` roles of ``llm.roles`` (default: the challenger's
endpoint and sampling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import inner.engine.harness
from inner.engine.records import Trajectory
from inner.llm.client import LLMClient
from inner.sdk.templates import render
from meta.edit import MAX_JSON_EDITS, Edit, edit_plan_model, edits_to_blocks

PROMPTS = Path(__file__).parent / "prompts"


def _cut(text: str | None, n: int) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def render_trajectories(trajectories: list[Trajectory], *, max_chars: int) -> str:
    """The trajectories as compact text for the analyzer, at most ``max_chars`` characters
    (each document gets an equal share; long fields are cut)."""
    if not trajectories:
        return "(no trajectories)"
    share = max(400, max_chars // len(trajectories))
    parts = []
    for t in trajectories:
        lines = [f"### Document: {t.title} ({t.status}: {_cut(t.end_reason, 160)}, {len(t.rounds)} rounds)"]
        if t.harness_error:
            lines.append(f"  harness error: {_cut(t.harness_error.strip().splitlines()[-1], 240)}")
        for e in t.events:
            if e.kind in ("note", "refused"):
                lines.append(f"  {e.kind}: {_cut(e.text, 200)}")
        for r in t.rounds:
            lines.append(f"- round {r.round}: {r.failure_mode.value} {'; '.join(r.reasons)}")
            if r.challenge is None:
                continue
            ch = r.challenge
            lines.append(f"  context: {_cut(ch.context, 240)}")
            lines.append(f"  question ({ch.question_type}): {_cut(ch.question, 240)}")
            lines.append(f"  reference: {_cut(ch.reference_answer, 200)}")
            lines.append("  rubric: " + "; ".join(f"{c.id} w{c.weight} {_cut(c.criterion, 80)}" for c in ch.rubric))
            if r.qv is not None:
                lines.append(f"  quality check: {'pass' if r.qv.passed else 'FAIL'} {_cut(r.qv.reason, 160)}")
            for side, attempts, avg in (
                ("weak", r.weak, r.weak_avg),
                ("strong", r.strong, r.strong_avg),
            ):
                if not attempts:
                    continue
                lines.append(f"  {side} solver (avg {_fmt(avg)}):")
                for a in attempts:
                    grades = ", ".join(f"{g.id}={g.score:g}" for g in a.grades)
                    lines.append(f"    [{_fmt(a.score)}] {grades} :: {_cut(a.answer, 160)}")
        parts.append("\n".join(lines)[:share])
    return "\n\n".join(parts)[:max_chars]


def history_summary(history: list[dict[str, Any]], *, last: int = 20) -> str:
    """One line per earlier iteration (the last ``last``; none when ``last`` is 0), oldest first."""
    if not history:
        return "(no earlier iterations)"
    if last <= 0:
        return "(history not shown: meta.history_lines=0)"
    lines = []
    for h in history[-last:]:
        cand = h.get("candidate_val")
        lines.append(
            f"iter {h['iteration']}: parent {str(h.get('parent'))[:8]} (val {_fmt(h.get('parent_val'))}) -> "
            f"{h['status']}"
            + (f" (candidate val {_fmt(cand)})" if cand is not None else "")
            + f"; change: {h.get('diff_summary') or '-'}; analysis: {_cut(h.get('analysis'), 160)}"
            + (f"; reason: {_cut(h.get('reason'), 120)}" if h.get("reason") else "")
        )
    return "\n".join(lines)


def contract_text() -> str:
    """The harness contract and the ``agent`` API, from :mod:`inner.engine.harness`'s docstring."""
    return (inner.engine.harness.__doc__ or "").strip()


def render_files(files: dict[str, str]) -> str:
    """Harness files as ``=== path ===`` sections (code fences would clash with edits)."""
    return "\n\n".join(f"=== {path} ===\n{text}" for path, text in sorted(files.items()))


async def analyze(
    client: LLMClient,
    *,
    harness_id: str,
    val_pass_rate: float,
    trajectories: list[Trajectory],
    history: list[dict[str, Any]],
    max_chars: int,
    history_lines: int = 20,
    sample_index: int = 0,
) -> str:
    """The analyzer's root-cause analysis (plain text); ``history_lines`` earlier iterations
    are summarized (``meta.history_lines``).

    Raises:
        LLMCallError: the request failed after retries.
    """
    messages = render(
        PROMPTS / "analyzer.md",
        harness_id=harness_id,
        val_pass_rate=f"{val_pass_rate:.3f}",
        history=history_summary(history, last=history_lines),
        trajectories=render_trajectories(trajectories, max_chars=max_chars),
    )
    return (await client.complete("analyzer", messages, sample_index=sample_index)).text.strip()


async def implement(
    client: LLMClient,
    *,
    analysis: str,
    history: list[dict[str, Any]],
    files: dict[str, str],
    structured: bool = False,
    history_lines: int = 20,
    repair: tuple[str, str] | None = None,
    sample_index: int = 0,
) -> str:
    """The implementer's reply as edit blocks (parsed by :func:`meta.edit.parse_edits`).

    Args:
        history: the iterations so far; the last ``history_lines`` are summarized.
        files: the parent harness's files (relative path -> text).
        structured: ask for the edits as schema-constrained JSON (``{"edits": [{"file",
            "search", "replace"}]}``, file names as an enum) and render them as blocks. For
            small grammar-constrained models, which rarely write the block format unaided.
            A reply that does not validate is returned raw (and then fails to parse).
        repair: ``(earlier reply, error)``: the same request followed by that reply and the
            error it caused (it did not apply, or the candidate failed validation), asking for
            corrected edits against the same files.

    Raises:
        LLMCallError: the request failed after retries.
    """
    values = {
        "analysis": analysis,
        "history": history_summary(history, last=history_lines),
        "files": render_files(files),
        "contract": contract_text(),
        "max_edits": MAX_JSON_EDITS,
    }
    messages = render(PROMPTS / ("implementer_json.md" if structured else "implementer.md"), **values)
    if repair is not None:
        earlier, error = repair
        messages += [
            {"role": "assistant", "content": earlier},
            {
                "role": "user",
                "content": f"Your edit could not be used: {error}\n\nReply again with corrected edits against the "
                "current files shown above (they are unchanged; your earlier edit was not kept).",
            },
        ]
    if not structured:
        return (await client.complete("implementer", messages, sample_index=sample_index)).text
    res = await client.complete_json(
        "implementer", messages, edit_plan_model(tuple(sorted(files))), sample_index=sample_index
    )
    if res.value is None:
        return res.raw[-1] if res.raw else ""
    return edits_to_blocks([Edit(e.file, e.search or None, e.replace) for e in res.value.edits])
