"""embedded_exact: a harness for the verifiable path on a small embedded model.

Calibrated for ``make demo`` (Qwen2.5-Coder-0.5B, ``conf/experiment/generate_demo.yaml``,
``task.verifiable=always``). The 0.5B challenger, left to pick the insight itself, wrote vague
rubrics and generic questions (pass rate 0.000 in every earlier embedded run). Here the harness
does the part the small model cannot (finding a short exact value the document states) in code,
and asks the question in the form the small open-book strong solver can answer:

1. candidates: distinctive exact terms in the excerpt the challenger sees (the same
   ``doc_chars`` as the open-book strong solver and the quality check in the profile, so the
   answer is in the passage the strong solver reads): identifiers with digits or underscores
   (``mixed_5b``), quoted named terms (``"structural phenomenon"``), acronyms (``NMF``),
   measured values (``96.3%``) and, last, proper names inside a sentence (``Penn Treebank``); words of the title and the metadata header are skipped
   (guessable / not content), and so is an acronym the document spells out (its expansion
   would be an equally right answer);
2. per candidate, one round: the sentence that states it with the term blanked out, or, when
   the term occurs more than once in it, a {context, question} the challenger writes from the
   passage (rejected when it contains the answer); the reference answer is the term, with a
   two-criterion rubric (the rubric policy still applies; in verifiable rounds no judge reads
   it);
3. ``agent.evaluate``: the frozen quality check, 4 closed-book weak and 4 open-book strong
   attempts, exact-match equivalence, the paper's gate (weak <= 1/4, strong >= 3/4).

Nothing here grades anything: the harness never sees a verdict before the frozen evaluator
gives it, and the gate, the quality check and the solvers are the evaluator's.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from inner.contract import Challenge, RubricItem, render

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
# a measured value: a decimal or a percentage, or a number with thousands separators (not a
# year, not a citation or a figure number); math-verify compares them as numbers
_NUMBER = re.compile(r"(?<![\w.\[])(\d+\.\d+%?|\d+%|\d{1,3}(?:,\d{3})+)(?![\w\]])")
_NAMED = re.compile(
    r"\b(?:we call (?:this|it|these|them)(?: \w+)?|(?:is|are) called|known as|referred to as|named) ([a-z][a-z\-]+(?: [a-z][a-z\-]+){0,2})\b"
)
# a proper name inside a sentence: one to three capitalised words (``Penn Treebank``, ``Xerox``)
_NAME = re.compile(r"\b([A-Z][a-z]{3,}(?: [A-Z][a-z]+){0,2})\b")
_AFTER_WORD = re.compile(r"\b[a-z]+[,;:]? $")
#: capitalised words that are no names
NOT_NAMES = {"Figure", "Table", "Section", "Appendix", "Equation", "However", "This", "These", "That", "There",
             "They", "When", "While", "Which", "What", "Where", "With", "From", "Here", "Note", "Each", "Both",
             "Other", "Introduction", "Distill"}  # fmt: skip
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
COMMON_ACRONYMS = {"AI", "ML", "CNN", "RNN", "GPU", "CPU", "URL", "PDF", "HTML", "API", "US", "OK", "CC", "BY"}


class Question(BaseModel):
    context: str
    question: str


def _body(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(META))


def _is_name(m: re.Match[str], sentence: str) -> bool:
    """A capitalised run that follows a lower-case word (so not a sentence start nor the tail
    of a longer name) and is no adverb or stock word."""
    first = m.group(1).split()[0]
    return bool(_AFTER_WORD.search(sentence[: m.start()])) and first not in NOT_NAMES and not first.endswith("ly")


def _expanded(acronym: str, body: str) -> bool:
    """The document spells the acronym out ("graph neural networks (GNNs)"): its expansion is
    an equally right answer that an exact check would reject, so it is no candidate (v1 lost
    rounds to "GP" answered as "Gaussian process")."""
    stem = acronym.rstrip("s")
    return f"({stem})" in body or f"({stem}s)" in body


def candidates(text: str, title: str) -> list[tuple[str, str, str]]:
    """Candidate exact answers in ``text`` (the excerpt the challenger sees).

    Returns:
        ``(term, sentence, passage)`` triples: the term, the sentence that states it (citation
        marks removed), and that sentence with the one before it (at most 600 characters).
        Ordered by kind, then by position: identifiers (``mixed_5b``); quoted multi-word and
        "called ..." names; measured values (``96.3%``) and acronyms not spelled out in the
        text; quoted single words; proper names inside a sentence. Terms made only of title
        words, duplicates, and sentences with math or fewer than 6 words are skipped.
    """
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
        found += [(2, m.group(1)) for m in _NUMBER.finditer(s)]
        found += [(4, m.group(1)) for m in _NAME.finditer(s) if _is_name(m, s)]
        found += [
            (2, m.group(0))
            for m in _ACRO.finditer(s)
            if m.group(0).rstrip("s") not in COMMON_ACRONYMS and not _expanded(m.group(0), body)
        ]
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
    """The fill-in-the-blank question (asked first): ``sentence`` with ``term`` blanked out, or
    ``None`` when the term does not occur exactly once in it (the blank must have one answer)."""
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
    """One candidate term per round until accepted, out of rounds or out of candidates: the
    fill-in-the-blank form of its sentence where it has one, else a question the challenger
    phrases."""
    excerpt = agent.document("challenger")
    tried = 0
    for term, sentence, passage in candidates(excerpt, agent.doc.title):
        if len(agent.rounds) >= agent.max_rounds or tried >= MAX_CANDIDATES:
            return
        tried += 1
        # the fill-in-the-blank form first: on the 0.5B model the open-book strong solver found
        # the term in 2 of 35 cloze rounds and in 0 of 23 phrased ones (v1 of this harness, which
        # phrased first, on the 30 cs documents)
        challenge = cloze(term, sentence)
        if challenge is None:
            challenge = await phrase(agent, term, passage)
        if challenge is None:
            continue
        report = await agent.evaluate(challenge)
        if report.accepted:
            return


async def phrase(agent, term: str, passage: str) -> Challenge | None:
    """A question about ``term`` written by the challenger from ``passage``; ``None`` when its
    replies are unusable or give the term away."""
    for sample in range(TRIES_PER_CANDIDATE):
        messages = render(PROMPTS / "challenger.md", domain=agent.domain, title=agent.doc.title,
                          passage=passage, answer=term)  # fmt: skip
        v = (await agent.llm_json("challenger", messages, Question, sample=sample)).value
        if v is not None and v.context.strip() and v.question.strip() and not _leaks(term, v.context, v.question):
            return _challenge(v.context.strip(), v.question.strip(), term)
        await agent.note(f"candidate {term!r}: challenger reply unusable or leaks the term")
    return None
