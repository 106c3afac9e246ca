"""Build the demo run directories of ``make train-demo`` from ``train/demo/examples.yaml``.

``python -m train.demo.build --out train/demo/source`` writes one run directory per domain
(``cs``, ``legal``) with ``config.yaml`` and ``dataset.jsonl``, using the project's record
writer (:class:`inner.engine.records.RunWriter`). The examples are written by hand (the embedded 0.5B
model is too weak to produce examples that pass the published gate), so the runs record
``method: hand_written_demo`` and no gate. Their weak and strong scores are measured, not
made up: the embedded model answers each example ``--n`` times closed-book (weak) and
open-book with a 2,500-character excerpt of the document (strong) with the frozen solver
prompt, and each answer is graded with the frozen judge (:func:`inner.evaluator.roles.judge_answer`)
or, for exact answers (:func:`inner.evaluator.answers.is_exact_reference`), by equivalence.
Takes minutes on 2 cores (llm=local).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml

from inner.config import LLMConfig, TaskConfig
from inner.engine.documents import Document, load_documents
from inner.engine.records import Example, RubricItem, RunWriter, example_id
from inner.evaluator import INNER_PROMPTS
from inner.evaluator.answers import answers_equivalent, extract_final_answer, is_exact_reference
from inner.evaluator.roles import judge_answer
from inner.io import atomic_write_text
from inner.sdk.templates import render
from train.judge import build_judge_client, judge_endpoints

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STRONG_DOC_CHARS = 2500
METHOD = "hand_written_demo"
HARNESS_ID = "hand-written@train-demo"


def _llm_config() -> LLMConfig:
    """The ``llm=local`` config of ``conf/train.yaml``, with short solver answers."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from inner.paths import PROJECT_ROOT
    from train.config import TrainConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        dcfg = compose(
            config_name="train",
            overrides=["llm.roles.weak_solver.max_tokens=128", "llm.roles.strong_solver.max_tokens=128"],
        )
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, TrainConfig)
    return cfg.llm


async def _score(
    client: Any, side: str, doc: Document, spec: dict[str, Any], rubric: list[RubricItem], exact: bool, n: int
) -> list[float]:
    block = f"## Source document\n{doc.excerpt(STRONG_DOC_CHARS)}\n\n" if side == "strong" else ""
    msgs = render(INNER_PROMPTS / "solver.md", document_block=block, context=spec["context"], question=spec["question"])
    scores = []
    for i in range(n):
        answer = (await client.complete(f"{side}_solver", msgs, sample_index=i)).text
        if exact:
            scores.append(1.0 if answers_equivalent(extract_final_answer(answer), spec["reference_answer"]) else 0.0)
            continue
        verdict = await judge_answer(
            client, context=spec["context"], question=spec["question"], rubric=rubric, answer=answer
        )
        scores.append(verdict.score if verdict.score is not None else 0.0)
    return scores


async def build_domain(name: str, spec: dict[str, Any], out: Path, client: Any, llm: LLMConfig, n: int) -> Path:
    """Write ``out/<name>/`` (config.yaml + dataset.jsonl) for one domain of the YAML file."""
    files = sorted({e["file"] for e in spec["examples"]})
    task = TaskConfig(name=name, corpus=spec["corpus"], files=files, domain=spec["domain"])
    docs = {Path(d.path).name: d for d in load_documents(task)}
    run_dir = out / name
    writer = RunWriter(run_dir)

    async def score(e: dict[str, Any]) -> tuple[list[float], list[float]]:
        doc, rubric = docs[e["file"]], [RubricItem(**c) for c in e["rubric"]]
        exact = is_exact_reference(e["reference_answer"])
        weak, strong = await asyncio.gather(
            _score(client, "weak", doc, e, rubric, exact, n), _score(client, "strong", doc, e, rubric, exact, n)
        )
        return weak, strong

    # all examples at once: the endpoint's in-flight limit (llama-server slots) bounds the calls
    scores = await asyncio.gather(*(score(e) for e in spec["examples"]))
    for j, (e, (weak, strong)) in enumerate(zip(spec["examples"], scores, strict=True)):
        doc = docs[e["file"]]
        ex = Example(
            example_id=example_id(doc.doc_id, e["question"]),
            doc_id=doc.doc_id,
            task=name,
            method=METHOD,
            harness_id=HARNESS_ID,
            round=1,
            context=e["context"],
            question=e["question"],
            reference_answer=e["reference_answer"],
            rubric=[RubricItem(**c) for c in e["rubric"]],
            question_type=e["question_type"],
            verifiable=is_exact_reference(e["reference_answer"]),
            weak_scores=weak,
            strong_scores=strong,
            weak_avg=fmean(weak),
            strong_avg=fmean(strong),
            gap=fmean(strong) - fmean(weak),
        )
        writer.append_example(ex)
        log.info("%s %d/%d: weak %s strong %s", name, j + 1, len(spec["examples"]), weak, strong)
    identity = {
        "method": METHOD,
        "harness_id": HARNESS_ID,
        "gate": None,
        "models": {k: ep.model for k, ep in llm.endpoints.items()},
        "note": "examples written by hand for the training demo; weak/strong scores measured with the embedded model",
    }
    config = {"method": METHOD, "task": asdict(task), "llm": asdict(llm), "solver_attempts": n}
    atomic_write_text(
        run_dir / "config.yaml", yaml.safe_dump({"identity": identity, "config": config}, sort_keys=False)
    )
    return run_dir


async def _build(out: Path, scratch: Path, n: int, llm: LLMConfig, urls: dict[str, str]) -> None:
    spec = yaml.safe_load((HERE / "examples.yaml").read_text(encoding="utf-8"))
    client = build_judge_client(llm, run_dir=scratch, base_urls=urls)
    try:
        await asyncio.gather(*(build_domain(name, dom, out, client, llm, n) for name, dom in spec.items()))
    finally:
        await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "source")
    ap.add_argument("--scratch", type=Path, default=Path("runs/train-demo-build"), help="LLM cache and server log")
    ap.add_argument("--n", type=int, default=1, help="weak and strong solver attempts per example")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    llm = _llm_config()
    with judge_endpoints(llm, run_dir=args.scratch) as urls:
        asyncio.run(_build(args.out, args.scratch, args.n, llm, urls))


if __name__ == "__main__":
    main()
