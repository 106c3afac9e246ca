"""``meta.fitness=student_gain`` (the DataAgent setting) end to end: a tiny randomly initialised
Qwen2 student (2 layers, hidden 64, the embedded tokenizer) is fine-tuned with LoRA SFT (TRL) on
each harness's accepted examples and scored on the public items of a fixed evaluation set by
the scripted judge, through the real meta loop, the sandbox and the project's LLM client; the
private items are read once, when the run ends."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from inner.io import read_jsonl
from inner.sdk.errors import ConfigError
from meta.loop import run_evolve
from tests.conftest import write_corpus
from tests.helpers.train import judge_script, legal_doc_ids, make_example, write_run
from tests.scenario import RoundPlan, Scenario
from tests.test_meta import GOOD_EDIT, NEUTRAL_EDIT, WORSE_EDIT, evolve_config

pytestmark = pytest.mark.train
pytest.importorskip("trl")

ACCEPT = RoundPlan(weak=[0.5], strong=[0.9])
TOO_EASY = RoundPlan(weak=[0.9])
#: bias on <|im_end|> so that the random student ends some answers before the length limit
#: (a truncated answer scores 0 without a judge call)
EOS_BIAS = 9.5


class StudentWorld(Scenario):
    """Teacher roles: every training document yields an accepted example, unless the challenger
    prompt says WORSE (every question too easy: no accepted example). The judge grades the inner
    loop's scripted solver answers as :class:`tests.scenario.Scenario` does and the student's
    answers with :func:`tests.helpers.train.judge_script`. The implementer's reply for iteration
    k is ``edits[k-1]``."""

    def __init__(self, edits: list[str]) -> None:
        super().__init__({"*": [ACCEPT]})
        self.edits = edits
        self.implementer_calls = 0

    def plan(self, marker: str, rnd: int) -> RoundPlan:
        return TOO_EASY if marker.endswith("BAD") else super().plan(marker.removesuffix("GOOD"), rnd)

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        user = body["messages"][-1]["content"]
        if role == "analyzer":
            return "Root cause: the student answers too long. Make reference answers short."
        if role == "implementer":
            with self._lock:
                self.implementer_calls += 1
                k = self.implementer_calls
            return self.edits[min(k, len(self.edits)) - 1]
        if role == "judge" and "ANSWER side=" not in user:
            return judge_script(role, body)
        out = super().__call__(role, body)
        if role == "challenger" and isinstance(out, dict):
            system = body["messages"][0]["content"]
            tag = "BAD" if "WORSE" in system else "GOOD" if "IMPROVED" in system else ""
            if tag:
                out = dict(out, question=out["question"].replace(" r", f"{tag} r", 1))
        return out


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 Qwen2 with random weights and the embedded tokenizer; its generation
    config biases <|im_end|> so that some sampled answers finish (and get judged)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from inner.llm.weights import ensure_gguf
    from inner.sdk.errors import ModelWeightsError

    try:
        gguf = ensure_gguf()
    except ModelWeightsError as exc:
        pytest.skip(f"embedded GGUF unavailable (needs the local extra): {exc}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("student")
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tok.pad_token_id, sequence_bias=[[[eos], EOS_BIAS]]
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def eval_set(tmp_path: Path) -> Path:
    """4 held-back legal documents, 2 examples each: public 1 document, private 3 (1 : 3)."""
    from meta.evalset import build_eval_set

    docs = legal_doc_ids(4)
    run = write_run(tmp_path / "heldback", [make_example(d, i) for d in docs for i in range(2)])
    build_eval_set([run], tmp_path / "evalset")
    return tmp_path / "evalset"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", ["MARK-T1", "MARK-T2", "MARK-V1"])


def student_cfg(corpus: Path, eval_set: Path, student: Path, *overrides: str) -> Any:
    return evolve_config(
        corpus,
        "split.val_files=[doc-mark-v1.txt]",
        "split.test_files=[]",
        "meta.fitness=student_gain",
        f"meta.student.eval_set={eval_set}",
        f"meta.student.model={student}",
        "meta.student.k=2",
        "meta.student.max_completion_length=8",
        "meta.student.max_length=384",
        "meta.student.learning_rate=5e-2",  # 3 LoRA steps that visibly move a random model
        "meta.student.bad_cases=2",
        "meta.selection=greedy",
        "meta.max_iterations=2",
        *overrides,
    )


def evolve(cfg: Any, run_dir: Path, srv: Any) -> dict[str, Any]:
    return asyncio.run(run_evolve(cfg, run_dir, base_urls={"default": srv.base_url}))


def _split(eval_set: Path) -> Any:
    from meta.evalset import load_eval_split

    return load_eval_split(eval_set, public_fraction=0.25, seed=0)


def test_student_gain_two_iterations_private_read_at_the_end(corpus, eval_set, student_dir, server, tmp_path):
    srv = server(StudentWorld([GOOD_EDIT, WORSE_EDIT]))
    run_dir = tmp_path / "run"
    summary = evolve(student_cfg(corpus, eval_set, student_dir), run_dir, srv)
    hist = read_jsonl(run_dir / "history.jsonl")
    assert [h["iteration"] for h in hist] == [1, 2]
    h1, h2 = hist

    # iteration 1: real training steps on the candidate's 2 accepted examples, real judged scores
    assert h1["status"] in ("admitted", "rejected")
    assert h1["candidate_examples_accepted"] == 2 and h1["candidate_train_steps"] >= 1
    assert math.isfinite(h1["candidate_train_loss"]) and h1["candidate_train_loss"] > 0
    base = h1["base_score"]
    assert 0 < base <= 1  # some answers finished and were judged above 0
    assert h1["candidate_fitness"] == pytest.approx((h1["candidate_val"] - base) / base)
    assert h1["gain"] == h1["candidate_fitness"] and h1["candidate_train_s"] > 0
    assert h1["calls"]["judge"] > 0 and h1["calls"]["challenger"] > 0 and h1["tokens"]["analyzer"] > 0
    # iteration 2: the WORSE candidate yields no accepted example: fitness 0, never admitted
    assert h2["status"] == "rejected" and "insufficient valid samples" in h2["reason"]
    assert h2["candidate_fitness"] == 0.0 and h2["candidate_examples_accepted"] == 0
    assert h2["candidate_train_steps"] is None and h2["candidate_val"] == base

    # the trained student differs from the base one, and was judged: fitness.json holds both
    fits = [json.loads(p.read_text()) for p in (run_dir / "student").glob("*/*/fitness.json")]
    assert len(fits) == 3  # root, candidate 1, candidate 2
    trained = [f for f in fits if f["train"]]
    assert len(trained) == 2 and all(f["public"]["items"] for f in trained)
    assert all(f["public"]["truncation_rate"] < 1 for f in trained)
    base_rec = json.loads(next((run_dir / "student").glob("base-*.json")).read_text())
    assert any(f["public"]["answers"] != base_rec["answers"] for f in trained)  # training changed the answers

    # the private items were read once, at the end, and reported
    split = _split(eval_set)
    private_docs, public_docs = set(split.docs("private")), set(split.docs("public"))
    assert len(public_docs) == 1 and len(private_docs) == 3
    conf = summary["confirmation"]
    assert conf["items"] == len(split.private) == 6 and set(conf["private"]) == {"base", "start", "best"}
    assert conf["gain_best"] == pytest.approx(
        (conf["private"]["best"] - conf["private"]["base"]) / conf["private"]["base"]
    )
    roles = [r for r, _ in srv.requests]
    last_teacher = max(i for i, r in enumerate(roles) if r in ("analyzer", "implementer", "challenger"))
    private_at = [i for i, (_, b) in enumerate(srv.requests) if any(d in json.dumps(b) for d in private_docs)]
    assert private_at and min(private_at) > last_teacher
    # the analyzer saw public bad cases and no private item
    analyzer = [json.dumps(b) for r, b in srv.requests if r == "analyzer"]
    assert len(analyzer) == 2
    assert all(any(d in a for d in public_docs) for a in analyzer)
    assert not any(d in a for a in analyzer for d in private_docs)
    assert summary["fitness"] == "student_gain" and summary["iterations"] == 2
    # the end-of-run table shows the private replay (it once failed on this confirmation's shape)
    from meta.cli import summary_table

    rows = dict(zip(*(c._cells for c in summary_table(summary, run_dir).columns), strict=True))
    assert rows["private replay (mean@k)"].startswith(f"base {conf['private']['base']:.3f}")
    # the report and the lineage page say what the scores are: the student's, with its base and the private replay
    from analysis.report import ReportConfig, TaxonomyConfig, build_report

    report = build_report(ReportConfig(run=str(run_dir), taxonomy=TaxonomyConfig(enabled=False))).read_text()
    assert "## Student public score (mean@k) over iterations" in report
    assert f"Untrained student's public score: {base:.3f}" in report
    assert f"private replay ({conf['items']} items): base student {conf['private']['base']:.3f}" in report
    assert "student public score (mean@k)" in (run_dir / "report" / "lineage.html").read_text()
    curve = read_jsonl(run_dir / "curve.jsonl")
    assert curve[0]["status"] == "root" and curve[0]["base_score"] == base


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so no handler of the loop catches it."""


def test_resume_after_kill_does_not_retrain_a_finished_candidate(
    corpus, eval_set, student_dir, server, tmp_path, monkeypatch
):
    import meta.student
    from meta.lineage import Lineage

    srv = server(StudentWorld([GOOD_EDIT, NEUTRAL_EDIT]))
    run_dir = tmp_path / "run"
    cfg = student_cfg(corpus, eval_set, student_dir)
    trainings: list[Path] = []
    real_train, real_add = meta.student.train_student, Lineage.add_candidate

    def counting_train(s: Any, dataset_dir: Path, out_dir: Path) -> dict[str, Any]:
        trainings.append(out_dir)
        return real_train(s, dataset_dir, out_dir)

    def kill_in_iteration_2(self: Lineage, src: Path, *, parent: str, iteration: int, message: str) -> str:
        if iteration == 2:  # the candidate's fitness is on disk, its history line is not
            raise Killed
        return real_add(self, src, parent=parent, iteration=iteration, message=message)

    monkeypatch.setattr(meta.student, "train_student", counting_train)
    monkeypatch.setattr(Lineage, "add_candidate", kill_in_iteration_2)
    with pytest.raises(Killed):
        evolve(cfg, run_dir, srv)
    assert len(read_jsonl(run_dir / "history.jsonl")) == 1
    assert len(trainings) == 3  # root, candidate 1, candidate 2 (finished, then killed)
    fit2 = json.loads((trainings[2] / "fitness.json").read_text())

    monkeypatch.setattr(Lineage, "add_candidate", real_add)
    trainings.clear()
    summary = evolve(cfg, run_dir, srv)
    hist = read_jsonl(run_dir / "history.jsonl")
    assert [h["iteration"] for h in hist] == [1, 2] and summary["iterations"] == 2
    assert trainings == []  # nothing retrained: the base, the root and both candidates were cached
    assert hist[1]["candidate_fitness"] == fit2["fitness"] and hist[1]["candidate_val"] == fit2["public_score"]


def test_public_private_split_keeps_documents_on_one_side(eval_set, tmp_path):
    from meta.evalset import check_disjoint, load_eval_split

    for seed in range(5):
        split = load_eval_split(eval_set, public_fraction=0.25, seed=seed)
        pub, priv = set(split.docs("public")), set(split.docs("private"))
        assert pub and priv and not pub & priv
        assert len(pub) == 1 and len(priv) == 3
        assert len(split.public) + len(split.private) == 8
        # every example of a document is on its document's side
        assert {r["doc_id"] for r in split.public} == pub and {r["doc_id"] for r in split.private} == priv
    assert load_eval_split(eval_set, public_fraction=0.25, seed=0).identity() == _split(eval_set).identity()
    shared = legal_doc_ids(1)[0]
    with pytest.raises(ConfigError, match=re.escape(shared)):
        check_disjoint({shared, "x"}, {shared, "y"}, where="evalset")


def test_evaluation_set_sharing_a_training_document_is_refused(eval_set, student_dir, server, tmp_path):
    """The run's training corpus holds a document of the evaluation set: a clear error before
    any generation."""
    from tests.helpers.train import LEGAL

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = sorted(LEGAL.glob("*.txt"))[:5]
    for p in files:
        (corpus / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    srv = server(StudentWorld([GOOD_EDIT]))
    cfg = student_cfg(
        corpus, eval_set, student_dir, f"split.train_files=[{files[0].name}]", f"split.val_files=[{files[4].name}]"
    )
    with pytest.raises(ConfigError, match="shares 1 document"):
        evolve(cfg, tmp_path / "run", srv)
    assert srv.count() == 0


def test_grpo_student_option(corpus, eval_set, student_dir, server, tmp_path):
    """meta.student.method=grpo: the starting harness's student trained with train.trainer's GRPO
    (its rubric-judge reward through the run's endpoints), then scored and replayed like SFT."""
    srv = server(StudentWorld([GOOD_EDIT]))
    run_dir = tmp_path / "run"
    cfg = student_cfg(
        corpus, eval_set, student_dir, "meta.student.method=grpo", "meta.student.max_steps=2", "meta.max_iterations=0"
    )
    summary = evolve(cfg, run_dir, srv)
    (fit,) = [json.loads(p.read_text()) for p in (run_dir / "student").glob("*/*/fitness.json")]
    assert fit["train"]["steps"] == 2 and fit["examples_accepted"] == 2
    assert (Path(fit["train"]["adapter"]) / "config.json").is_file()  # the merged GRPO checkpoint
    metrics = (run_dir / "student").glob("*/*/grpo/metrics.jsonl")
    assert [json.loads(x)["step"] for x in next(metrics).read_text().splitlines() if "reward" in x] == [1, 2]
    assert set(summary["confirmation"]["private"]) == {"base", "start", "best"}
