"""Loading source documents.

A corpus is a directory of ``.txt``, ``.md``, ``.tex`` and ``.pdf`` files. Each readable file
becomes a :class:`Document` with a stable id ``<slug>-<first 8 hex of sha256(text)>``, so the
same text always gets the same id and an edited file gets a new one. Empty, binary and
unreadable files are skipped and listed together in one warning.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

from inner.config import TaskConfig
from inner.paths import resolve_path
from inner.sdk.errors import DocumentError

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".md", ".tex", ".pdf")
TRUNCATION_MARK = "\n[... document truncated ...]"


#: file-backed documents' texts kept in memory at once, at most (the documents in flight read
#: theirs from here; the rest of a corpus is on disk, so memory does not grow with the corpus)
TEXT_CACHE_SIZE = 1024
#: and at most this many characters in all; a longer text is read again on each use
TEXT_CACHE_CHARS = 64 * 1024 * 1024


class Document:
    """One source document.

    A document loaded from a corpus keeps only its id, path, title and length in memory; its
    text is read from ``path`` when asked for, through a least-recently-used cache of at most
    :data:`TEXT_CACHE_SIZE` texts and :data:`TEXT_CACHE_CHARS` characters (a 20,000-document corpus no longer sits in memory for
    a whole run; issue 10). A
    document made with ``text=`` (tests, in-memory corpora) holds its text.

    Attributes:
        doc_id: ``<slug>-<8 hex of the content sha256>``; stable across runs.
        path: where it was read from.
        title: the ``Title:`` header line if present, else the file stem.
        n_chars: length of the text in characters.
        text: the full text (UTF-8, normalised newlines).

    Raises:
        DocumentError: (reading ``text``) the file is gone or was edited since it was loaded
            (its content hash no longer matches ``doc_id``).
    """

    __slots__ = ("doc_id", "path", "title", "n_chars", "_text")

    def __init__(self, doc_id: str, path: str, title: str, text: str | None = None, *, n_chars: int | None = None):
        if text is None and n_chars is None:
            raise ValueError("Document needs its text or, for a file-backed document, n_chars")
        self.doc_id, self.path, self.title = doc_id, path, title
        self.n_chars = len(text) if text is not None else int(n_chars)  # type: ignore[arg-type]
        self._text = text

    @property
    def text(self) -> str:
        """The full text (read through the cache for a file-backed document; see the class)."""
        return self._text if self._text is not None else _TEXTS.get(self.path, self.doc_id)

    def __repr__(self) -> str:
        return f"Document(doc_id={self.doc_id!r}, path={self.path!r}, title={self.title!r}, n_chars={self.n_chars})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        return (self.doc_id, self.path, self.title, self.n_chars) == (
            other.doc_id,
            other.path,
            other.title,
            other.n_chars,
        )

    def __hash__(self) -> int:
        return hash((self.doc_id, self.path))

    def excerpt(self, max_chars: int) -> str:
        """The text cut to at most ``max_chars`` characters at a clean boundary.

        Cuts at the last paragraph break, else sentence end, else whitespace, within the
        budget, and appends a marker saying that the text was truncated. ``max_chars <= 0``
        gives ``""``.
        """
        if max_chars <= 0:
            return ""
        text = self.text
        if len(text) <= max_chars:
            return text
        if max_chars <= 2 * len(TRUNCATION_MARK):  # too small for the marker: cut at whitespace
            head = text[:max_chars]
            cut = head.rfind(" ")
            return (head[:cut] if cut > 0 else head).rstrip()
        budget = max(0, max_chars - len(TRUNCATION_MARK))
        head = text[:budget]
        for sep in ("\n\n", ". ", "\n", " "):
            cut = head.rfind(sep)
            if cut >= budget // 2:
                head = head[: cut + (1 if sep == ". " else 0)]
                break
        return head.rstrip() + TRUNCATION_MARK


def slugify(name: str, max_len: int = 48) -> str:
    """Lower-case ASCII slug of ``name`` (letters, digits, single dashes), at most ``max_len``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "doc"


def make_doc_id(name: str, text: str) -> str:
    """``<slug(name)>-<8 hex of sha256(text)>``."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{slugify(name)}-{digest}"


def _read_text(path: Path) -> str:
    """Text of one file; raises ValueError with a reason when it is unusable."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        try:
            reader = PdfReader(str(path))
            text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        except Exception as exc:  # pypdf raises many types for broken files
            raise ValueError(f"unreadable PDF ({type(exc).__name__}: {exc})") from exc
    else:
        raw = path.read_bytes()
        if b"\x00" in raw[:8192]:
            raise ValueError("binary content (NUL bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise ValueError("empty")
    return text


class _TextCache:
    """Least-recently-used texts of file-backed documents: at most ``max_texts`` of them and
    ``max_chars`` characters in all."""

    def __init__(self, max_texts: int, max_chars: int) -> None:
        self.max_texts, self.max_chars, self.chars = max_texts, max_chars, 0
        self.texts: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, doc_id: str) -> str:
        key = (path, doc_id)
        with self.lock:
            if key in self.texts:
                self.texts.move_to_end(key)
                return self.texts[key]
        text = _load_checked(path, doc_id)
        with self.lock:
            if len(text) <= self.max_chars and key not in self.texts:
                self.texts[key] = text
                self.chars += len(text)
                while self.chars > self.max_chars or len(self.texts) > self.max_texts:
                    self.chars -= len(self.texts.popitem(last=False)[1])
        return text

    def clear(self) -> None:
        with self.lock:
            self.texts.clear()
            self.chars = 0


def _load_checked(path: str, doc_id: str) -> str:
    """The text of a file-backed document, checked against its id."""
    try:
        text = _read_text(Path(path))
    except (OSError, ValueError) as exc:
        raise DocumentError(f"document {doc_id} ({path}) can no longer be read: {exc}") from exc
    if not doc_id.endswith("-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]):
        raise DocumentError(
            f"document {path} changed since it was loaded (its id {doc_id} no longer matches its content); "
            "rerun to pick up the new version"
        )
    return text


_TEXTS = _TextCache(TEXT_CACHE_SIZE, TEXT_CACHE_CHARS)


def _title(text: str, fallback: str) -> str:
    first = text.lstrip().split("\n", 1)[0]
    if first.lower().startswith("title:"):
        return first.split(":", 1)[1].strip() or fallback
    return fallback


def list_document_paths(task: TaskConfig) -> list[Path]:
    """The files ``task`` names (without reading them): ``task.files`` inside ``task.corpus``,
    or every supported file there not in ``task.exclude``, sorted.

    Raises:
        DocumentError: the corpus path does not exist, or a file of ``task.files`` is missing.
    """
    root = resolve_path(task.corpus)
    if not root.exists():
        raise DocumentError(f"task.corpus={task.corpus!r} does not exist (resolved to {root})")
    if root.is_file():
        return [root]
    if task.files:
        paths = [root / f for f in task.files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DocumentError(f"task.files names files missing from {root}: {missing}")
        return paths
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES and p.name not in task.exclude
    )


def load_documents(task: TaskConfig) -> list[Document]:
    """Load the documents of ``task``.

    Args:
        task: ``corpus`` directory (or a single file), optional ``files``, ``order`` and
            ``limit``.

    Returns:
        Documents in the configured order, at most ``task.limit`` of them.

    Raises:
        DocumentError: the corpus path does not exist, a file named in ``task.files`` is
            missing, or no readable document is left.
    """
    root = resolve_path(task.corpus)
    paths = list_document_paths(task)
    docs: list[Document] = []
    skipped: list[str] = []
    for path in paths:
        try:
            text = _read_text(path)
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name} ({exc})")
            continue
        docs.append(Document(make_doc_id(path.stem, text), str(path), _title(text, path.stem), n_chars=len(text)))
    if skipped:
        log.warning("skipped %d unusable file(s): %s", len(skipped), "; ".join(skipped))
    if not docs:
        raise DocumentError(
            f"no readable document in {root} (supported: {', '.join(SUFFIXES)}; skipped {len(skipped)})"
        )
    if task.order == "shortest":
        docs.sort(key=lambda d: (d.n_chars, d.doc_id))
    if task.limit is not None:
        docs = docs[: task.limit]
    return docs
