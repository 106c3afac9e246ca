"""The sandbox protocol's line format: how the parent reads what a harness sends it.

Each protocol message is one line of JSON (an object). A line from the sandbox is untrusted
input, read once by :func:`decode_line` before anything else looks at it:

- a line that is not JSON, not an object, nested deeper than :data:`MAX_DEPTH`, or so deep that
  the JSON decoder gives up, is a :class:`ProtocolError` (the parent ends the document as
  ``crashed`` with that reason, at once); a line over the reader's byte limit is refused the
  same way by :mod:`inner.sandbox.process`;
- every string in it (keys included) is valid UTF-8 afterwards: a lone surrogate (JSON allows
  ``"\\udcff"``; UTF-8 does not) becomes U+FFFD (:func:`clean_text`), so no string a harness
  hands the parent can break a record's serialization.

The caps on what a harness may put into the records (notes, labels) are here too:
:data:`NOTE_CHARS`, :data:`LABEL_CHARS` and :func:`clean_label` (the last two, with
:func:`clean_text`, live in :mod:`inner.sdk.contract`, whose ``Challenge.question_type`` is a label).

This module is part of the harness SDK (it is copied into the sandbox): it imports nothing of
the project outside ``inner/sdk/``.
"""

from __future__ import annotations

import json
from typing import Any

from inner.sdk.contract import LABEL_CHARS, clean_label, clean_text

__all__ = [
    "LABEL_CHARS", "MAX_DEPTH", "NOTE_CHARS", "ProtocolError", "clean_label", "clean_text", "decode_line",
    "sanitize",
]  # fmt: skip

#: deepest nesting of lists and objects a protocol line may have (a real request is under 20:
#: a JSON schema or a tool definition inside an ``llm`` request)
MAX_DEPTH = 64
#: longest note, refusal or reported error kept in a trajectory event, characters
NOTE_CHARS = 4000


class ProtocolError(ValueError):
    """A protocol line that cannot be read: not JSON, not an object, or pathological (too deep).
    The message reads as what was sent (``"malformed protocol line ..."``)."""


def sanitize(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of the JSON value ``value`` with every string (keys included) passed through
    :func:`clean_text`; iterative, so no depth can exhaust the stack.

    Raises:
        ProtocolError: lists and objects nested deeper than ``max_depth``.
    """

    def leaf(v: Any) -> Any:
        return clean_text(v) if isinstance(v, str) else v

    if not isinstance(value, dict | list):
        return leaf(value)
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]
    while stack:
        src, dst, depth = stack.pop()
        if depth > max_depth:
            raise ProtocolError(f"protocol line nested deeper than {max_depth} levels")
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, dict | list):
                child: Any = {} if isinstance(v, dict) else []
                stack.append((v, child, depth + 1))
            else:
                child = leaf(v)
            if isinstance(dst, dict):
                dst[clean_text(k)] = child
            else:
                dst.append(child)
    return root


def decode_line(raw: bytes | str) -> dict[str, Any]:
    """One protocol line as a JSON object whose strings are all valid UTF-8 (:func:`sanitize`).

    Raises:
        ProtocolError: not JSON, not an object, or nested too deep (the message says which).
    """
    try:
        msg = json.loads(raw)
    except RecursionError as exc:
        raise ProtocolError(f"protocol line nested too deep to decode (over {MAX_DEPTH} levels)") from exc
    except ValueError as exc:
        raise ProtocolError(f"malformed protocol line ({exc}): {raw[:200]!r}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError(f"protocol line that is not an object: {raw[:200]!r}")
    return sanitize(msg)
