"""Admission you can trust: replicates, tallies, paired admission, noise floor, confirmation,
through the real meta loop, the sandbox and the scripted OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from inner.io import read_jsonl
from inner.llm.cache import REPLICATE_STRIDE, sample_index
from meta.export import export_harness
from meta.loop import run_evolve
from meta.tallies import TallyStore
from tests.conftest import write_corpus
from tests.scenario import Scenario, challenge_json
from tests.test_meta import evolve_config

VAL = [f"MARK-V{i}" for i in range(1, 7)]
TEST = [f"MARK-S{i}" for i in range(1, 5)]
ANCHOR = "You are the challenger in Agentic Self-Instruct"
#: latent quality (probability that a document passes) of the harness, set by its challenger prompt
Q_BASE, Q_HIGH = 0.35, 0.9


def tag_edit(tag: str) -> str:
    return f"FILE: prompts/challenger.md\n<<<<<<< SEARCH\n{ANCHOR}\n=======\n{ANCHOR} {tag}\n>>>>>>> REPLACE\n"


class QualityWorld(Scenario):
    """Every document passes with the harness's latent quality, drawn per (document, harness
    tags, replicate): ``QUALITY-HIGH`` in the challenger prompt makes it ``Q_HIGH``, anything
    else (``NEUTRAL-k`` tags included) ``Q_BASE``. The replicate is read from the solver
    request's seed (``inner.llm.cache.sample_index``), so replicates are independent draws and
    a replicate replayed is the same draw. The implementer's reply for iteration k is
    ``edits[k-1]`` (the last repeats)."""

    def __init__(self, edits: list[str]) -> None:
        super().__init__({"*": []})
        self.edits = edits
        self.implementer_calls = 0

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        msgs = body["messages"]
        user = msgs[1]["content"] if len(msgs) > 1 else msgs[0]["content"]
        if role == "analyzer":
            return "Root cause: the questions are too easy."
        if role == "implementer":
            with self._lock:
                self.implementer_calls += 1
                k = self.implementer_calls
            return self.edits[min(k, len(self.edits)) - 1]
        if role == "challenger":
            marker = re.search(r"MARK-[A-Za-z0-9]+", user).group(0)  # type: ignore[union-attr]
            tags = "".join(sorted(re.findall(r"(?:NEUTRAL|QUALITY)-[A-Z0-9]+", msgs[0]["content"])))
            return challenge_json(f"Q{marker} T{tags.replace('-', '') or 'BASE'} r1")
        if role == "quality_verifier":
            return {"context_leak": False, "generic": False, "multi_part": False, "rubric_covers_answer": True,
                    "reason": "fine"}  # fmt: skip
        if role == "main_agent":
            return "Try another section."
        m = re.search(r"Q(MARK-[A-Za-z0-9]+) T([A-Za-z0-9]+) r1", user)
        assert m, f"no scripted question in {role}: {user[-300:]!r}"
        if role in ("weak_solver", "strong_solver"):
            replicate = body.get("seed", 0) // REPLICATE_STRIDE
            q = Q_HIGH if "QUALITYHIGH" in m.group(2) else Q_BASE
            u = int(hashlib.sha256(f"{m.group(1)}|{m.group(2)}|{replicate}".encode()).hexdigest()[:8], 16) / 2**32
            side = role.split("_")[0]
            return f"ANSWER side={side} {m.group(0)} verdict={'PASS' if u < q else 'FAIL'}"
        if role == "judge":
            # weak 0.5 + strong 0.9: accepted; weak 0.9: too easy
            score = 0.9 if "side=strong" in user or "verdict=FAIL" in user else 0.5
            k = round(10 * score)
            return {"grades": [{"id": f"c{j}", "score": int(j <= k)} for j in range(1, 11)]}
        raise AssertionError(f"unexpected role {role!r}")


NEUTRAL = [tag_edit(f"NEUTRAL-{k}") for k in range(1, 5)]
BETTER = tag_edit("QUALITY-HIGH")


@pytest.fixture
def world_corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", ["MARK-T1", *VAL, *TEST])


def world_config(corpus: Path, *overrides: str) -> Any:
    return evolve_config(
        corpus,
        "split.train_files=[doc-mark-t1.txt]",
        f"split.val_files=[{','.join(f'doc-{m.lower()}.txt' for m in VAL)}]",
        f"split.test_files=[{','.join(f'doc-{m.lower()}.txt' for m in TEST)}]",
        "meta.selection=greedy",
        f"meta.max_iterations={len(NEUTRAL) + 1}",
        "inner.max_concurrent_documents=8",
        "meta.admission=paired",  # the default (tests.test_meta.evolve_config sets strict)
        *overrides,
    )


def evolve(cfg: Any, run_dir: Path, srv: Any) -> dict[str, Any]:
    return asyncio.run(run_evolve(cfg, run_dir, base_urls={"default": srv.base_url}))


def test_sample_index_keeps_replicate_zero_and_separates_replicates():
    assert sample_index(stream="weak", index=2) == 2
    assert sample_index(stream="strong", index=2) == 1002  # the strong stream offset, as before replicates
    assert sample_index(replicate=3, stream="judge", index=5) == 3 * REPLICATE_STRIDE + 5
    with pytest.raises(ValueError):
        sample_index(stream="nope")


def test_strict_admits_a_neutral_mutant(world_corpus, server, tmp_path):
    """The paper's strict rule on this noisy world: some neutral mutant gets in."""
    srv = server(QualityWorld(NEUTRAL))
    cfg = world_config(
        world_corpus, "meta.admission=strict", "meta.confirm_reps=0", "meta.noise_reps=1",
        f"meta.max_iterations={len(NEUTRAL)}",
    )  # fmt: skip
    evolve(cfg, tmp_path / "strict", srv)
    hist = read_jsonl(tmp_path / "strict" / "history.jsonl")
    assert [h["status"] for h in hist].count("admitted") >= 1, [(h["status"], h["reason"]) for h in hist]
    assert all(0 < h["p_value"] <= 1 and h["admission"]["rule"] == "strict" for h in hist)
    # strict compares one candidate run with one fresh parent replicate (index 1: after the noise floor's 0)
    assert all(h["candidate_runs"] == h["parent_runs"] == 1 for h in hist)


def test_paired_admits_only_the_better_mutant_and_confirms_it(world_corpus, server, tmp_path):
    """Paired (the default): no neutral mutant, the better one, and a confirmed gain on the
    sealed test split; tallies, noise floor, replicates, export and a zero-call rerun."""
    srv = server(QualityWorld([*NEUTRAL, BETTER]))
    run_dir = tmp_path / "paired"
    summary = evolve(world_config(world_corpus), run_dir, srv)
    hist = read_jsonl(run_dir / "history.jsonl")
    assert [h["status"] for h in hist] == ["rejected"] * 4 + ["admitted"], [(h["status"], h["reason"]) for h in hist]
    better = hist[-1]
    assert better["T"] >= 1 and better["p_value"] <= 0.10 and better["admission"]["rule"] == "paired"
    # the parent (the root) has the noise floor's 3 runs, and one more for each look any of its
    # candidates raced (race_parent): fresh replicates, counted in its tallies
    assert better["candidate_runs"] >= 2 and better["parent_runs"] >= 3
    assert better["admission_cost"]["document_evals"] >= 2 * len(VAL) and better["admission_cost"]["tokens"] > 0
    for h in hist[:4]:  # each decision says why, with its statistic
        assert h["T"] is not None and h["reason"] and "T=" in h["reason"]
    curve = read_jsonl(run_dir / "curve.jsonl")
    assert curve[0]["noise_floor"]["n_replicates"] == 3 and all("T" in c for c in curve[1:])

    # noise floor: the root replicated 3 times, its tallies seeded with replicates 0..2
    floor = summary["noise_floor"]
    assert floor["n_replicates"] == 3 and floor["std"] is not None and len(floor["per_doc"]) == len(VAL)
    assert floor["doc_spread"] > 0  # documents flip between replicates: the noise the paired rule sees
    store = TallyStore(run_dir / "tallies.json")
    root = summary["baseline_val_pass_rate"]
    assert root == pytest.approx(floor["mean"])
    root_content = json.loads((run_dir / "archive.json").read_text())["entries"][0]["harness_id"].split("@")[1]
    assert store.counted(root_content) == list(range(max(h["parent_runs"] for h in hist)))
    # winner's curse: the replicates that admitted the better one are its decision, not its tallies
    cand = better["candidate_harness_id"].split("@")[1]
    entry = store.harnesses[cand]
    assert entry["decision"]["replicates"] == list(range(better["candidate_runs"]))
    assert store.counted(cand) == [] and store.first_replicate(cand) == better["candidate_runs"]

    # confirmation on the sealed test split: a positive gain with an interval
    conf = summary["confirmation"]
    assert conf["best_commit"] == better["candidate"] and not conf["best_is_start"]
    assert conf["gain_points"] > 0 and conf["ci95_points"][0] <= conf["gain_points"] <= conf["ci95_points"][1]
    assert 0 < conf["p_value"] <= 1 and conf["replicates"] == 2 and len(conf["per_doc"]) == len(TEST)
    assert json.loads((run_dir / "confirmation.json").read_text()) == conf
    # the test documents were read only by the confirmation, after the last iteration
    test_ids = [i for i, (_, b) in enumerate(srv.requests) if "MARK-S" in json.dumps(b)]
    last_iter = max(i for i, (role, _) in enumerate(srv.requests) if role == "implementer")
    assert test_ids and min(test_ids) > last_iter

    # replicates are fresh samples: the solvers saw several replicate indices of the same questions
    seeds = {(b["messages"][-1]["content"][-80:], b["seed"]) for r, b in srv.requests if r == "weak_solver"}
    reps = {s // REPLICATE_STRIDE for _, s in seeds}
    assert {0, 1, 2} <= reps

    # the export says what was confirmed; another harness says it was not
    _, manifest = export_harness(run_dir, tmp_path / "exp-best")
    assert manifest["confirmation"]["gain_points"] == conf["gain_points"]
    _, manifest = export_harness(run_dir, tmp_path / "exp-root", harness=hist[0]["parent"])
    assert manifest["confirmation"] is None and "not confirmed" in manifest["confirmation_note"]

    # a rerun of the finished run (same budget) makes zero LLM calls and keeps the tallies
    before, tallies = srv.count(), (run_dir / "tallies.json").read_text()
    again = evolve(world_config(world_corpus), run_dir, srv)
    assert srv.count() == before
    assert (run_dir / "tallies.json").read_text() == tallies
    assert again["confirmation"] == conf and again["iterations"] == 5

    # the end-of-run table lists the noise floor and each decision with T and p
    from meta.cli import decision_rows, summary_table

    rows = dict(decision_rows(run_dir / "history.jsonl"))
    assert rows["decision: iteration 5"].startswith(f"admitted, T={better['T']:+.2f}, p={better['p_value']:.3f}")
    assert len(rows) == 5 and all(f"decision: iteration {h['iteration']}" in rows for h in hist)
    assert len(summary_table(summary, run_dir).rows) >= 5 + 8
    assert dict(decision_rows(run_dir / "history.jsonl", last=2))["decisions"] == "3 earlier ones in history.jsonl"

    # the report shows the noise floor, each decision's T and p, and the confirmed gain
    from analysis.report import ReportConfig, TaxonomyConfig, build_report

    report = build_report(ReportConfig(run=str(run_dir), taxonomy=TaxonomyConfig(enabled=False))).read_text()
    assert "Noise floor of the starting harness" in report and "confirmed test gain +" in report
    assert f"| 5 | admitted | {better['candidate_val']:.3f}" in report and f"{better['p_value']:.3f} |" in report


def test_tallies_survive_a_reload_and_count_a_replicate_once(tmp_path):
    store = TallyStore(tmp_path / "tallies.json")
    assert store.add_replicate("h1", 0, {"a": True, "b": False})
    assert not store.add_replicate("h1", 0, {"a": False, "b": False})  # already counted: ignored
    store.add_replicate("h1", 1, {"a": True, "b": True})
    store.set_first_replicate("h2", 2)
    store.record_decision("h2", {"replicates": [0, 1], "T": 1.5})
    store.save()
    again = TallyStore(tmp_path / "tallies.json")  # what a resumed run (MetaRun) reads
    assert again.tallies("h1").to_json() == {"a": [2, 2], "b": [1, 2]}
    assert again.counted("h1") == [0, 1] and again.first_replicate("h2") == 2 and again.counted("h2") == []
    assert again.harnesses["h1"]["tallies"] == {"a": [2, 2], "b": [1, 2]}
    (tmp_path / "tallies.json").write_text("{not json")
    from inner.sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="unreadable"):
        TallyStore(tmp_path / "tallies.json")
