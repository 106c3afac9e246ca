"""Reports from run directories made by the project's own writers (real loops through the
scripted server), including the lineage page rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from analysis.curves import aggregate_curves, curve_points
from analysis.dataset_stats import failure_modes_per_round, score_samples, summary_row
from analysis.lineage_report import lineage_nodes
from analysis.loaders import load_generation_run, load_meta_run
from analysis.report import ReportConfig, TaxonomyConfig, build_report
from analysis.taxonomy import UNASSIGNED
from inner.config import LLMConfig
from tests.conftest import run, write_corpus
from tests.scenario import RoundPlan
from tests.test_meta import (
    GOOD_EDIT,
    NEUTRAL_EDIT,
    OUTSIDE_EDIT,
    MetaScenario,
    evolve,
    evolve_config,
)

TYPES = {
    "types": [
        {"name": "mechanism", "description": "how something works"},
        {"name": "comparison", "description": "x vs y"},
    ]
}


class TaxonomyScript:
    """Answers the taxonomist role; the assignment of any question containing ``bad`` is
    unparseable (first attempt and repair)."""

    def __init__(self, inner: Any, bad: str = "MARK-V2GOOD") -> None:
        self.inner = inner
        self.bad = bad

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        if role != "taxonomist":
            return self.inner(role, body)
        system = body["messages"][0]["content"]
        if "Assign the question" in system:
            if self.bad in body["messages"][1]["content"]:
                return "not json at all"
            return {"type": "comparison" if "r1" in body["messages"][1]["content"] else "mechanism"}
        return TYPES


@pytest.fixture
def meta_run(tmp_path, server) -> tuple[Path, Any]:
    corpus = write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])
    # iteration 2: an edit outside the harness, and again in its one repair attempt: invalid-edit
    srv = server(TaxonomyScript(MetaScenario([GOOD_EDIT, OUTSIDE_EDIT, OUTSIDE_EDIT, NEUTRAL_EDIT])))
    evolve(
        evolve_config(corpus, "meta.max_iterations=3", "meta.selection=greedy"),
        tmp_path / "evo",
        srv,
    )
    return tmp_path / "evo", srv


def test_meta_report_curve_lineage_stats_taxonomy(meta_run):
    run_dir, srv = meta_run
    meta = load_meta_run(run_dir)
    pts = curve_points(meta)
    assert [p["status"] for p in pts] == ["admitted", "invalid-edit", "rejected"]
    assert [p["best_so_far"] for p in pts] == [1.0, 1.0, 1.0] and meta.baseline == 0.5
    assert pts[1]["candidate_val"] is None

    nodes = lineage_nodes(meta)
    assert [n["status"] for n in nodes] == ["root", "admitted", "invalid-edit", "rejected"]
    assert nodes[1]["parent"] == nodes[0]["id"] and nodes[3]["parent"] == nodes[1]["id"]
    assert "+IMPROVED" in nodes[1]["diff"] and nodes[1]["delta"] == 0.5
    assert "outside the harness directory" in nodes[2]["reason"]

    cfg = ReportConfig(run=str(run_dir), taxonomy=TaxonomyConfig(population="all"), llm=LLMConfig())
    report = build_report(cfg, base_urls={"default": srv.base_url})
    out = report.parent
    for name in (
        "curve.png",
        "curve.svg",
        "lineage.html",
        "stats_scores.png",
        "stats_failure_modes.png",
        "stats_rounds.png",
        "methods.md",
        "methods.png",
        "taxonomy.json",
        "taxonomy.png",
        "report.md",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = report.read_text()
    assert "1 of 3 candidates admitted" in text and "lineage.html" in text
    # methods: starting vs best harness on the same validation documents
    methods = (out / "methods.md").read_text()
    assert methods.count("Agentic Self-Instruct") == 2 and "Warning" not in methods

    tax = json.loads((out / "taxonomy.json").read_text())
    assert [t["name"] for t in tax["types"]] == ["mechanism", "comparison"]
    # every item has exactly one type; counts add up; failures are bookkept as unassigned
    assert sum(tax["counts"].values()) == tax["n_items"] == len(tax["assignments"])
    assert set(tax["assignments"].values()) <= {"mechanism", "comparison", UNASSIGNED}
    assert tax["n_items"] == 4  # 2 validation documents x (starting harness, best harness)
    assert tax["parse_failures"]["assign"] == tax["counts"][UNASSIGNED] == 1


def test_generation_stats_and_methods_table(make_cfg, server, tmp_path):
    from tests.conftest import scenario

    too_easy, accept = (
        RoundPlan(weak=[0.8, 0.8, 0.8]),
        RoundPlan(weak=[0.5, 0.5, 0.5], strong=[0.9, 0.8, 0.7]),
    )
    srv = server(scenario(too_easy, accept))
    run(make_cfg("inner.max_rounds=3"), tmp_path / "agentic", srv)
    srv2 = server(scenario(too_easy))
    run(make_cfg("method=cot_self_instruct"), tmp_path / "cot", srv2)
    agentic, cot = load_generation_run(tmp_path / "agentic"), load_generation_run(tmp_path / "cot")
    s = score_samples(agentic)
    assert s["weak"] == pytest.approx([0.8, 0.5] * 3) or sorted(s["weak"]) == pytest.approx([0.5] * 3 + [0.8] * 3)
    assert s["strong_accepted"] == pytest.approx([0.8] * 3) and s["gap_accepted"] == pytest.approx([0.3] * 3)
    assert failure_modes_per_round(agentic) == {1: {"TOO_EASY": 3}, 2: {"ACCEPTED": 3}}
    row = summary_row(agentic)
    assert row["pass_rate"] == 1.0 and row["mean_rounds_to_accept"] == 2.0
    assert row["tokens_per_accepted"] == pytest.approx(row["tokens"] / 3) and row["tokens"] > 0
    crow = summary_row(cot)
    assert crow["pass_rate"] == 0.0 and crow["weak_avg"] == pytest.approx(0.8) and crow["method"] == "CoT Self-Instruct"

    cfg = ReportConfig(
        run=str(tmp_path / "agentic"),
        runs=[str(tmp_path / "cot")],
        taxonomy=TaxonomyConfig(enabled=False),
    )
    report = build_report(cfg)
    methods = (report.parent / "methods.md").read_text()
    assert "CoT Self-Instruct" in methods and "| 0.000 |" in methods and "| 1.000 |" in methods


def test_multirun_aggregation(tmp_path, server):
    corpus = write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1", "MARK-V2", "MARK-S1"])
    sweep = tmp_path / "sweep"
    srv_a = server(MetaScenario([GOOD_EDIT]))
    evolve(evolve_config(corpus, "meta.max_iterations=2"), sweep / "0", srv_a)
    srv_b = server(MetaScenario([NEUTRAL_EDIT]))
    evolve(evolve_config(corpus, "meta.max_iterations=2"), sweep / "1", srv_b)
    members = [load_meta_run(sweep / "0"), load_meta_run(sweep / "1")]
    rows = aggregate_curves(members)
    assert rows[0] == {"iteration": 0, "mean": 0.5, "std": 0.0, "n": 2}
    assert rows[1]["mean"] == pytest.approx(0.75) and rows[1]["std"] == pytest.approx(0.25)
    report = build_report(ReportConfig(run=str(sweep), taxonomy=TaxonomyConfig(enabled=False)))
    assert (report.parent / "multirun_curve.png").is_file()
    table = (report.parent / "final_scores.md").read_text()
    assert "| 0 | 2 | 1 | 0.500 | 1.000 |" in table and "| 1 | 2 | 0 | 0.500 | 0.500 |" in table


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make browser installs Debian's chromium)")
def test_lineage_html_renders_in_headless_chromium(meta_run, tmp_path):
    run_dir, srv = meta_run
    build_report(ReportConfig(run=str(run_dir), taxonomy=TaxonomyConfig(enabled=False)))
    page = run_dir / "report" / "lineage.html"
    meta = load_meta_run(run_dir)
    admitted = next(n for n in lineage_nodes(meta) if n["status"] == "admitted")
    browser = _chromium()
    assert browser is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", f"file://{page}#{admitted['id']}"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('class="node ') == 4  # root + 3 iterations rendered as tree nodes
    assert f'id="node-{admitted["id"]}"' in dom and "node admitted selected" in dom
    assert 'id="detail-diff"' in dom and "+IMPROVED You are the challenger" in dom
    assert "Root cause: questions are answerable" in dom  # the analysis behind it
    shot = run_dir / "report" / "lineage.png"
    subprocess.run(
        [browser, *flags, "--window-size=1400,900", f"--screenshot={shot}", f"file://{page}#{admitted['id']}"],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
