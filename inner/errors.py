"""The exception tree of Autodata.

::

    AutodataError                 base of every error this project raises on purpose
    ├── ConfigError               a bad config value; the message names the key and the fix
    ├── DocumentError             a missing path, or a corpus with no readable document
    ├── BackendError              an LLM server could not be started or reached
    │   └── ModelWeightsError     the embedded GGUF is missing or has the wrong sha256
    ├── LLMCallError              one request failed after all retries (status, role kept)
    └── HarnessError              a harness directory does not honour the contract

Malformed LLM *output* is not an exception: it becomes a typed failure record with the raw
text kept (see :class:`inner.llm.client.JSONResult`), so one bad completion never kills a run.
"""

from __future__ import annotations


class AutodataError(Exception):
    """Base class of every error raised on purpose by Autodata."""


class ConfigError(AutodataError, ValueError):
    """A config value is invalid. The message names the key, the value and the fix."""


class DocumentError(AutodataError):
    """The corpus path is missing, or it holds no readable document."""


class BackendError(AutodataError):
    """An LLM backend could not be started, or did not become healthy in time."""


class ModelWeightsError(BackendError):
    """The embedded model's weight packages are missing or assemble to a wrong hash."""


class LLMCallError(AutodataError):
    """One LLM request failed after all retries.

    Attributes:
        role: the role that made the call (e.g. ``"weak_solver"``).
        status: HTTP status code, or ``None`` for timeouts and dropped connections.
    """

    def __init__(self, message: str, *, role: str, status: int | None = None) -> None:
        super().__init__(message)
        self.role = role
        self.status = status


class HarnessError(AutodataError):
    """A harness directory is missing, does not import, or lacks a contract function."""
