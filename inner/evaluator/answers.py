"""Answers (part of the frozen evaluator): final-answer extraction, normalization and
equivalence for verifiable (exact-answer) tasks.

- :func:`extract_final_answer` and :func:`normalize_answer`: the final answer of a solver reply
  and its normalized form for exact-match voting.

- :func:`is_exact_reference` is the frozen rule behind ``task.verifiable=auto``: a reference
  answer is exact when ``math-verify`` parses it as a mathematical expression or it is a short
  canonical value (a number, a yes/no, a single token). The challenger has no say.
- :func:`answers_equivalent` compares a solver's final answer with the reference: by
  ``math-verify`` (``parse`` + ``verify``) when both parse as mathematics, else by normalized
  exact match (:func:`normalize_answer`).
"""

from __future__ import annotations

import functools
import logging
import re

log = logging.getLogger(__name__)
# math-verify warns on every call that its signal-based timeout is off; inputs are bounded
# by MATH_CHARS instead (signals only work in the main thread, and rewards run in threads)
logging.getLogger("math_verify").setLevel(logging.ERROR)

#: longest text (characters) handed to math-verify's parser
MATH_CHARS = 200

#: longest reference (characters) that can count as a short canonical value
SHORT_VALUE_CHARS = 40
_WORDS = re.compile(r"[A-Za-z]+")


_FINAL = re.compile(r"final answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def extract_final_answer(answer: str) -> str:
    """The final answer of a solver reply: the last ``Final answer: X`` line, else the last
    ``\\boxed{X}``, else the last non-empty line."""
    finals = _FINAL.findall(answer)
    if finals:
        return finals[-1].strip()
    boxed = _BOXED.findall(answer)
    if boxed:
        return boxed[-1].strip()
    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def normalize_answer(text: str) -> str:
    """Normalized form for exact-match voting.

    Lower-case; unwrap ``\\boxed{}``, ``\\text{}``; drop ``$``, ``\\(``, ``\\)``, surrounding
    quotes, brackets and trailing punctuation; collapse whitespace; numbers are canonical
    (``1,000`` -> ``1000``, ``0.50`` -> ``0.5``, ``2.0`` -> ``2``).
    """
    t = text.strip()
    boxed = _BOXED.search(t)
    if boxed:
        t = boxed.group(1)
    t = _TEXT.sub(r"\1", t)
    t = t.replace("$", "").replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    t = t.lower().strip().strip("\"'`*").rstrip(".;,!").strip()
    while len(t) >= 2 and (t[0], t[-1]) in (("(", ")"), ("[", "]"), ("{", "}")):
        t = t[1:-1].strip()
    t = re.sub(r"\s+", " ", t)
    num = t.replace(",", "") if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", t) else t
    try:
        value = float(num)
    except ValueError:
        return t
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


@functools.lru_cache(maxsize=4096)
def _parse_math(text: str) -> tuple[object, ...]:
    """``math_verify.parse`` of ``text`` (empty when nothing parses); cached."""
    if len(text) > MATH_CHARS:
        return ()
    try:
        from math_verify import parse
    except ImportError:  # pragma: no cover - math-verify is a core dependency
        return ()
    try:
        wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
        return tuple(parse(wrapped, parsing_timeout=None))
    except Exception as exc:  # math-verify raises many types on odd input
        log.debug("math-verify could not parse %r: %s", text[:80], exc)
        return ()


def is_exact_reference(reference: str) -> bool:
    """The frozen rule of ``task.verifiable=auto``: is ``reference`` an exact answer?

    True when it is short (at most :data:`SHORT_VALUE_CHARS` characters after normalization)
    and either parses as mathematics with ``math-verify`` or is a canonical value: a number,
    yes/no/true/false, or at most three words.
    """
    norm = normalize_answer(reference)
    if not norm or len(norm) > SHORT_VALUE_CHARS:
        return False
    if norm in {"yes", "no", "true", "false"}:
        return True
    if re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", norm):
        return True
    if _parse_math(reference.strip()) and not len(_WORDS.findall(norm)) > 1:
        return True
    return len(norm.split()) <= 3 and not norm.endswith("?")


def answers_equivalent(answer: str, reference: str) -> bool:
    """Is the final answer ``answer`` equivalent to ``reference``?

    Both are final answers (already extracted, e.g. by
    :func:`extract_final_answer`). Normalized exact match first; then
    ``math-verify`` when both sides parse as mathematics (``1/2`` equals ``0.5``).
    """
    a, r = normalize_answer(answer), normalize_answer(reference)
    if not a:
        return False
    if a == r:
        return True
    gold, pred = _parse_math(reference.strip()), _parse_math(answer.strip())
    if not gold or not pred:
        return False
    try:
        from math_verify import verify

        return bool(verify(list(gold), list(pred), timeout_seconds=None))
    except Exception as exc:
        log.debug("math-verify could not compare %r and %r: %s", answer[:80], reference[:80], exc)
        return False
