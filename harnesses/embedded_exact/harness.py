"""embedded_exact: a harness for the verifiable path on a small embedded model.

Calibrated for ``make demo`` (Qwen2.5-Coder-0.5B, ``conf/experiment/generate_demo.yaml``,
``task.verifiable=always``). The 0.5B challenger, left to pick the insight itself, wrote vague
rubrics and generic questions (pass rate 0.000 in every earlier embedded run). Here the harness
does the part the small model cannot (finding a short exact value the document states) in code,
and the challenger LLM does the part it can (phrasing a question about it):

1. candidates: distinctive exact terms in the excerpt the challenger sees (the same
   ``doc_chars`` as the open-book strong solver and the quality check in the profile, so the
   answer is in the passage the strong solver reads): identifiers with digits or underscores
   (``mixed_5b``), quoted named terms (``"structural phenomenon"``), acronyms (``NMF``);
   words of the title and the metadata header are skipped (guessable / not content);
2. per candidate, the challenger writes {context, question} from the sentence that states it;
   the harness rejects (and moves on) when the context or question contains the answer, and
   sets the reference answer to the term and a two-criterion rubric (the rubric policy still
   applies; in verifiable rounds no judge reads it);
3. ``agent.evaluate``: the frozen quality check, 4 closed-book weak and 4 open-book strong
   attempts, exact-match equivalence, the paper's gate (weak <= 1/4, strong >= 3/4).

Nothing here grades anything: the harness never sees a verdict before the frozen evaluator
gives it, and the gate, the quality check and the solvers are the evaluator's.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from inner.contract import Challenge, FailureMode, RubricItem, render

PROMPTS = Path(__file__).parent / "prompts"

#: metadata header lines of the shipped corpora (not content)
META = ("Title:", "Authors:", "Source:", "License:", "Note:")
#: challenger replies tried per candidate before moving on
TRIES_PER_CANDIDATE = 2
#: candidates tried (challenger calls are cheap next to a round's 8 solver calls)
MAX_CANDIDATES = 8
# the solvers' answer format, in the question (calib-2: open-book strong solvers echoed the
# filled-in sentence, correct but not an exact final answer)
SUFFIX = 'Reply with only one line: "Final answer: <the exact term>".'
CLOZE = "Fill in the blank with the exact term the article uses: "

_IDENT = re.compile(r"\b[A-Za-z][A-Za-z]*(?:_[A-Za-z0-9]+|[0-9][A-Za-z0-9_]*)\b")
_QUOTED = re.compile(r"[\u201c\"]([A-Za-z][A-Za-z \-]{2,38}[A-Za-z])[.,]?[\u201d\"]")
_ACRO = re.compile(r"\b[A-Z]{2,6}s?\b")
_NAMED = re.compile(
    r"\b(?:we call (?:this|it|these|them)(?: \w+)?|(?:is|are) called|known as|referred to as|named) ([a-z][a-z\-]+(?: [a-z][a-z\-]+){0,2})\b"
)
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
COMMON_ACRONYMS = {"AI", "ML", "CNN", "RNN", "GPU", "CPU", "URL", "PDF", "HTML", "API", "US", "OK", "CC", "BY"}


class Question(BaseModel):
    context: str
    question: str


def _body(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(META))


def candidates(text: str, title: str) -> list[tuple[str, str, str]]:
    """(term, sentence, passage) triples, most distinctive first: identifiers, quoted terms, acronyms."""
    body = _body(text)
    sentences = [s.strip() for s in _SENT.split(body) if s.strip()]
    title_words = {w.lower() for w in re.findall(r"[A-Za-z0-9_]+", title)}
    seen: set[str] = set()
    out: list[tuple[int, int, str, str, str]] = []
    for si, s in enumerate(sentences):
        s = s.replace(" [cite]", "").replace("[cite]", "").replace("[Figure caption:", "").strip()
        if len(re.findall(r"\b[a-z]{3,}\b", s)) < 6:  # figure tables, lists of names: no sentence to ask about
            continue
        found = [(0, m.group(0)) for m in _IDENT.finditer(s)]
        # quoted multi-word names first; a quoted single word is often a metaphor ("paint")
        found += [
            (1 if " " in m.group(1) else 3, m.group(1)) for m in _QUOTED.finditer(s) if len(m.group(1).split()) <= 3
        ]
        found += [(1, m.group(1)) for m in _NAMED.finditer(s)]
        found += [(2, m.group(0)) for m in _ACRO.finditer(s) if m.group(0).rstrip("s") not in COMMON_ACRONYMS]
        for kind, term in found:
            term = re.split(r" (?:and|or|to|in|of|we|that|which|is|are)\b", term)[0].strip()
            if term.lower().startswith("the ") or "$" in s or len(term) < 2:
                continue  # a cut-off phrase, or a sentence with math (identifiers there are symbols)
            key = term.lower()
            if key in seen or set(re.findall(r"[a-z0-9_]+", key)) <= title_words:
                continue
            seen.add(key)
            prev = sentences[si - 1] if si > 0 and len(s) < 200 else ""
            passage = (prev + " " + s).strip()[:600]
            out.append((kind, si, term, s, passage))
    out.sort(key=lambda t: (t[0], t[1]))
    return [(term, sentence, passage) for _, _, term, sentence, passage in out]


def cloze(term: str, sentence: str) -> Challenge | None:
    """The fallback question: the sentence that states the term, with the term blanked out
    (only when the term occurs once in it, so the blank has one answer)."""
    if sentence.lower().count(term.lower()) != 1:
        return None
    i = sentence.lower().index(term.lower())
    blanked = sentence[:i] + "____" + sentence[i + len(term) :]
    return _challenge("A technical article explains this in its own terms.", f'{CLOZE}"{blanked}"', term)


def _challenge(context: str, question: str, term: str) -> Challenge:
    question = f"{question} {SUFFIX}"
    return Challenge(
        context=context,
        question=question,
        reference_answer=term,
        rubric=[
            RubricItem(
                id="c1", criterion=f'The final answer is exactly "{term}", the term the document states.', weight=7
            ),
            RubricItem(
                id="c2", criterion="The final answer gives that single term and no competing alternatives.", weight=2
            ),
        ],
        question_type="exact-term",
    )


def _leaks(term: str, *texts: str) -> bool:
    t = term.lower()
    return any(t in x.lower() for x in texts)


async def run(agent) -> None:
    """One candidate term per round until accepted, out of rounds or out of candidates."""
    excerpt = agent.document("challenger")
    tried = 0
    for term, sentence, passage in candidates(excerpt, agent.doc.title):
        if len(agent.rounds) >= agent.max_rounds or tried >= MAX_CANDIDATES:
            return
        tried += 1
        q = None
        for sample in range(TRIES_PER_CANDIDATE):
            messages = render(PROMPTS / "challenger.md", domain=agent.domain, title=agent.doc.title,
                              passage=passage, answer=term)  # fmt: skip
            res = await agent.llm_json("challenger", messages, Question, sample=sample)
            v = res.value
            if v is not None and v.context.strip() and v.question.strip() and not _leaks(term, v.context, v.question):
                q = v
                break
            await agent.note(f"candidate {term!r}: challenger reply unusable or leaks the term")
        attempts = []
        if q is not None:
            attempts.append(_challenge(q.context.strip(), q.question.strip(), term))
        fallback = cloze(term, sentence)
        if fallback is not None:
            attempts.append(fallback)
        for challenge in attempts:
            if len(agent.rounds) >= agent.max_rounds:
                return
            report = await agent.evaluate(challenge)
            if report.accepted:
                return
            # only a strong-side failure is worth a second form of the same term
            if report.failure_mode is not FailureMode.FAILED_STRONG:
                break
