"""Answer equivalence for verifiable (exact-answer) tasks (part of the frozen evaluator).

- :func:`is_exact_reference` is the frozen rule behind ``task.verifiable=auto``: a reference
  answer is exact when ``math-verify`` parses it as a mathematical expression or it is a short
  canonical value (a number, a yes/no, a single token). The challenger has no say.
- :func:`answers_equivalent` compares a solver's final answer with the reference: by
  ``math-verify`` (``parse`` + ``verify``) when both parse as mathematics, else by normalized
  exact match (:func:`inner.evaluator.normalize_answer`).
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
    from inner.evaluator import normalize_answer

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
    :func:`inner.evaluator.extract_final_answer`). Normalized exact match first; then
    ``math-verify`` when both sides parse as mathematics (``1/2`` equals ``0.5``).
    """
    from inner.evaluator import normalize_answer

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
