"""Documents: loading a corpus (txt, md, tex, pdf; provenance files excluded; unusable files
skipped with one warning), stable document ids, limits and order, and clean excerpts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inner.config import TaskConfig
from inner.engine.documents import TRUNCATION_MARK, Document, load_documents, make_doc_id
from inner.sdk.errors import DocumentError


def _task(corpus: Path, **kw) -> TaskConfig:
    return TaskConfig(corpus=str(corpus), **kw)


def make_pdf(path: Path, text: str) -> None:
    """A minimal one-page PDF showing ``text`` in Helvetica (ASCII only)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(out)


def test_loads_txt_md_tex_and_excludes_provenance_files(tmp_path):
    c = tmp_path / "c"
    (c / "sub").mkdir(parents=True)
    (c / "a.txt").write_text("Title: Alpha Paper\n\nBody of alpha.\n")
    (c / "b.md").write_text("# Beta\n\nBody of beta.\n")
    (c / "sub" / "c.tex").write_text("\\section{Gamma} body of gamma.\n")
    (c / "SOURCES.md").write_text("provenance, not a document\n")
    (c / "README.md").write_text("readme, not a document\n")
    (c / "notes.rst").write_text("unsupported suffix\n")
    docs = load_documents(_task(c))
    assert sorted(Path(d.path).name for d in docs) == ["a.txt", "b.md", "c.tex"]
    by_name = {Path(d.path).name: d for d in docs}
    assert by_name["a.txt"].title == "Alpha Paper" and by_name["b.md"].title == "b"
    assert by_name["c.tex"].text == "\\section{Gamma} body of gamma.\n"


def test_crlf_is_normalised(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    (c / "a.txt").write_bytes(b"line one\r\nline two\rline three\n")
    (doc,) = load_documents(_task(c))
    assert doc.text == "line one\nline two\nline three\n"


def test_unusable_files_are_skipped_in_one_warning(tmp_path, caplog):
    c = tmp_path / "c"
    c.mkdir()
    (c / "good.txt").write_text("A good document.\n")
    (c / "empty.txt").write_text("")
    (c / "blank.md").write_text("  \n\n\t\n")
    (c / "binary.txt").write_bytes(b"abc\x00\x01\x02def")
    (c / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="inner.engine.documents"):
        docs = load_documents(_task(c))
    assert [Path(d.path).name for d in docs] == ["good.txt"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "inner.engine.documents"]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    for name in ("empty.txt", "blank.md", "binary.txt", "latin1.txt"):
        assert name in msg
    assert "NUL" in msg and "UTF-8" in msg and "empty" in msg


def test_corpus_with_no_readable_document_raises_with_path(tmp_path):
    c = tmp_path / "only-provenance"
    c.mkdir()
    (c / "SOURCES.md").write_text("provenance\n")
    with pytest.raises(DocumentError, match="only-provenance"):
        load_documents(_task(c))
    (c / "empty.txt").write_text("")
    with pytest.raises(DocumentError, match=r"only-provenance.*skipped 1"):
        load_documents(_task(c))


def test_missing_corpus_raises_with_path(tmp_path):
    missing = tmp_path / "no-such-corpus"
    with pytest.raises(DocumentError, match="no-such-corpus") as ei:
        load_documents(_task(missing))
    assert "task.corpus" in str(ei.value)


def test_missing_named_file_raises(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    (c / "a.txt").write_text("alpha\n")
    assert len(load_documents(_task(c, files=["a.txt"]))) == 1
    with pytest.raises(DocumentError, match="missing.txt"):
        load_documents(_task(c, files=["a.txt", "missing.txt"]))


def test_doc_ids_are_stable_and_change_with_the_text(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    f = c / "My Paper (2022).txt"
    f.write_text("Original text.\n")
    (first,) = load_documents(_task(c))
    (again,) = load_documents(_task(c))
    assert first.doc_id == again.doc_id
    assert first.doc_id.startswith("my-paper-2022-") and len(first.doc_id.rsplit("-", 1)[1]) == 8
    assert make_doc_id("My Paper (2022)", "Original text.\n") == first.doc_id
    f.write_text("Edited text.\n")
    (edited,) = load_documents(_task(c))
    assert edited.doc_id != first.doc_id and edited.doc_id.startswith("my-paper-2022-")


def test_limit_and_shortest_order(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    for name, n in (("a.txt", 300), ("b.txt", 100), ("c.txt", 200)):
        (c / name).write_text("x" * n)
    assert [Path(d.path).name for d in load_documents(_task(c))] == ["a.txt", "b.txt", "c.txt"]
    assert [Path(d.path).name for d in load_documents(_task(c, order="shortest"))] == [
        "b.txt",
        "c.txt",
        "a.txt",
    ]
    assert [Path(d.path).name for d in load_documents(_task(c, order="shortest", limit=2))] == [
        "b.txt",
        "c.txt",
    ]
    assert [Path(d.path).name for d in load_documents(_task(c, limit=1))] == ["a.txt"]


def test_pdf_text_is_loaded(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    make_pdf(c / "paper.pdf", "Hello MARK-PDF from a PDF file")
    (doc,) = load_documents(_task(c))
    assert "MARK-PDF" in doc.text and doc.title == "paper"


def test_corrupt_and_blank_pdfs_are_skipped_with_a_reason(tmp_path, caplog):
    from pypdf import PdfWriter

    c = tmp_path / "c"
    c.mkdir()
    (c / "good.txt").write_text("fine\n")
    (c / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    w = PdfWriter()
    w.add_blank_page(width=200, height=200)
    with (c / "blank.pdf").open("wb") as fh:
        w.write(fh)
    with caplog.at_level(logging.WARNING, logger="inner.engine.documents"):
        docs = load_documents(_task(c))
    assert [Path(d.path).name for d in docs] == ["good.txt"]
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "inner.engine.documents"]
    assert "broken.pdf (unreadable PDF" in msg and "blank.pdf (empty)" in msg


def _doc(text: str) -> Document:
    return Document(doc_id="d", path="d.txt", title="d", text=text)


def test_excerpt_short_text_is_unchanged():
    d = _doc("short text")
    assert d.excerpt(100) == "short text" and d.excerpt(10) == "short text"
    assert d.excerpt(0) == ""


def test_excerpt_cuts_at_a_paragraph_break_within_budget():
    paras = [f"Paragraph {i} " + "word " * 30 for i in range(10)]
    d = _doc("\n\n".join(paras))
    for budget in (200, 500, 1000):
        out = d.excerpt(budget)
        assert len(out) <= budget and out.endswith(TRUNCATION_MARK)
        body = out[: -len(TRUNCATION_MARK)]
        assert d.text.startswith(body) and d.text[len(body) :].lstrip(" ").startswith("\n\n")
        assert body.rstrip().endswith("word")


def test_excerpt_cuts_at_a_sentence_end_without_paragraphs():
    d = _doc(" ".join(f"Sentence number {i} says something." for i in range(40)))
    out = d.excerpt(300)
    assert len(out) <= 300 and out.endswith(TRUNCATION_MARK)
    body = out[: -len(TRUNCATION_MARK)]
    assert body.endswith("something.") and d.text.startswith(body)


def test_excerpt_never_exceeds_a_tiny_budget():
    d = _doc("word " * 200)
    for budget in (5, 20, 40):
        assert len(d.excerpt(budget)) <= budget


def test_a_loaded_document_reads_its_text_from_disk_and_refuses_an_edited_file(tmp_path):
    """A corpus is not held in memory (issue 10): the text is read on demand and checked
    against the document id, so a file edited mid-run is a clear error, not a silent mix."""
    from inner.engine import documents

    c = tmp_path / "c"
    c.mkdir()
    (c / "a.txt").write_text("Original body.\n")
    (doc,) = load_documents(_task(c))
    assert doc._text is None and doc.n_chars == len("Original body.\n")
    assert doc.text == "Original body.\n"
    (c / "a.txt").write_text("Edited body.\n")
    documents._TEXTS.clear()
    with pytest.raises(DocumentError, match="changed since it was loaded"):
        _ = doc.text
    (c / "a.txt").unlink()
    documents._TEXTS.clear()
    with pytest.raises(DocumentError, match="can no longer be read"):
        _ = doc.text


def test_the_text_cache_is_bounded_in_texts_and_characters(tmp_path):
    from inner.engine.documents import _TextCache

    c = tmp_path / "c"
    c.mkdir()
    for name in ("a", "b", "c"):
        (c / f"{name}.txt").write_text(f"text {name}\n")  # 7 characters each
    docs = load_documents(_task(c))
    cache = _TextCache(max_texts=10, max_chars=14)
    assert [cache.get(d.path, d.doc_id) for d in docs] == ["text a\n", "text b\n", "text c\n"]
    assert cache.chars == 14 and [k[0] for k in cache.texts] == [docs[1].path, docs[2].path]  # a evicted
    big = _TextCache(max_texts=10, max_chars=3)
    assert big.get(docs[0].path, docs[0].doc_id) == "text a\n" and big.chars == 0  # too long to keep
    few = _TextCache(max_texts=1, max_chars=100)
    for d in docs:
        few.get(d.path, d.doc_id)
    assert list(few.texts) == [(docs[2].path, docs[2].doc_id)] and few.chars == 7
