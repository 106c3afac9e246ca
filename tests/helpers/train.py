"""Training-side helpers: run directories with hand-made accepted examples (written with the
project's own writers), the scripted rubric judge and the composed train config. Shared by
``tests/test_train_export.py``, ``tests/test_train_rewards.py`` and ``tests/test_train_grpo.py``;
nothing here imports torch."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from inner.engine.documents import make_doc_id
from inner.engine.records import Example, RubricItem, RunWriter, example_id
from inner.engine.run import write_run_config
from inner.paths import PROJECT_ROOT
from tests.conftest import compose_config
from tests.scripted_server import Reply

LEGAL = PROJECT_ROOT / "experiments" / "corpora" / "legal"


def legal_doc_ids(n: int) -> list[str]:
    """Doc ids of the first ``n`` shipped legal documents, made as the document loader does."""
    files = sorted(p for p in LEGAL.glob("*.txt"))[:n]
    return [make_doc_id(p.stem, p.read_text(encoding="utf-8")) for p in files]


def make_example(doc_id: str, i: int, *, verifiable: bool = False, task: str = "legal") -> Example:
    question = f"Question {i} about {doc_id}?"
    reference = "0.5" if verifiable else f"The court held point {i}."
    return Example(
        example_id=example_id(doc_id, question),
        doc_id=doc_id,
        task=task,
        method="agentic_self_instruct",
        harness_id="baseline@test",
        round=1,
        context=f"Context {i} for {doc_id}.",
        question=question,
        reference_answer=reference,
        rubric=[
            RubricItem(id="c1", criterion="names the holding", weight=3),
            RubricItem(id="c2", criterion="cites the statute", weight=2),
            RubricItem(id="p1", criterion="confuses plaintiff and defendant", weight=-4),
        ],
        question_type="holding",
        verifiable=verifiable,
        weak_scores=[0.2, 0.4],
        strong_scores=[0.8, 0.8],
        weak_avg=0.3,
        strong_avg=0.8,
        gap=0.5,
    )


def write_run(run_dir: Path, examples: list[Example], *, corpus: Path = LEGAL, task: str = "legal") -> Path:
    """A run directory as autodata-generate leaves it: config.yaml (identity + resolved config)
    and dataset.jsonl, written with the project's own writers."""
    cfg = compose_config(f"task.corpus={corpus}", f"task.name={task}", "gate=lenient")
    RunWriter(run_dir)  # creates the directory layout
    write_run_config(run_dir, cfg, "baseline@test")
    writer = RunWriter(run_dir)
    for ex in examples:
        writer.append_example(ex)
    return run_dir


def judge_script(role: str, body: dict[str, Any]) -> Reply | dict[str, Any]:
    """The judge's verdicts: criterion ``X`` is met (or pitfall ``X`` committed) iff the answer
    contains ``<X>``. An answer without markers (a tiny model's random text) meets the first
    requirement, meets the others by a bit of its hash and commits no pitfall, so every finished
    completion scores above 0 and its score varies. ``GARBAGE`` in the answer makes the judge
    reply with unusable text."""
    assert role == "judge", role
    user = body["messages"][1]["content"]
    crit = re.findall(r"^- id (\S+) \[(\w+)", user, flags=re.MULTILINE)
    answer = user.split("## Answer to grade", 1)[1]
    if "GARBAGE" in answer:
        return Reply(content="I think it is fine.")
    if re.search(r"<[a-z]\d>", answer):
        return {"grades": [{"id": i, "score": int(f"<{i}>" in answer)} for i, _ in crit]}
    h = hashlib.sha256(answer.encode()).digest()
    grades = [
        {"id": i, "score": 0 if kind == "PITFALL" else 1 if n == 0 else h[n] % 2} for n, (i, kind) in enumerate(crit)
    ]
    return {"grades": grades}


def train_config(*overrides: str) -> Any:
    from train.config import TrainConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        dcfg = compose(config_name="train", overrides=["llm.endpoints.default.max_retries=0", *overrides])
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, TrainConfig)
    return cfg
