"""GRPO end to end on CPU: a tiny randomly initialised Qwen2 (2 layers, hidden 64) with the
embedded model's tokenizer (read from the GGUF) trains on an exported run directory, rewarded
by the scripted judge through the project's LLM client; checkpoints, metrics, resume. The slow
test trains the real embedded 0.5B model (LoRA) for one step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.train import judge_script, legal_doc_ids, make_example, train_config, write_run

pytestmark = pytest.mark.train
pytest.importorskip("trl")

#: bias on <|im_end|> so that a random model ends some completions before the length limit
EOS_BIAS = 9.5


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 Qwen2 with random weights and the embedded tokenizer, saved as a
    checkpoint directory (the same loading path as any policy)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from inner.llm.weights import ensure_gguf
    from inner.sdk.errors import ModelWeightsError

    try:
        gguf = ensure_gguf()
    except ModelWeightsError as exc:
        pytest.skip(f"embedded GGUF unavailable (needs the local extra): {exc}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny")
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    docs = legal_doc_ids(3)
    exs = [make_example(d, i) for d in docs for i in range(2)] + [make_example(docs[1], 7, verifiable=True)]
    return write_run(tmp_path / "gen", exs)


def tiny_cfg(model_dir: Path, run: Path, *overrides: str) -> Any:
    cfg = train_config(
        f"policy.model={model_dir}",
        f"data.runs=[{run}]",
        "grpo.max_steps=2",
        "grpo.per_device_train_batch_size=8",
        "grpo.num_generations=4",
        "grpo.max_completion_length=12",
        "grpo.learning_rate=1e-3",
        "grpo.beta=0.1",
        "grpo.save_steps=1",
        "llm.endpoints.default.timeout_s=10",
        *overrides,
    )
    eos = json.loads((model_dir / "config.json").read_text())["eos_token_id"]
    cfg.grpo.extra = {"generation_kwargs": {"sequence_bias": [[[eos], EOS_BIAS]]}}
    return cfg


def test_two_grpo_steps_checkpoint_metrics_and_resume(tiny_model_dir, run_dir, server, tmp_path):
    from transformers import AutoModelForCausalLM

    from inner.sdk.errors import ConfigError
    from train.trainer import run_train

    srv = server(judge_script)
    out = tmp_path / "train"
    urls = {"default": srv.base_url}
    summary = run_train(tiny_cfg(tiny_model_dir, run_dir), out, base_urls=urls)

    assert summary["global_step"] == 2 and summary["resumed_from"] is None
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and (out / "checkpoint-2").is_dir()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        for key in ("reward", "reward_std", "completions/clipped_ratio", "completions/mean_length", "kl", "loss"):
            assert key in r, key
    # TRL's truncation rate and the rewards' own truncation count agree (8 completions a step)
    truncated = sum(v["truncated"] for v in summary["rewards"].values())
    assert truncated == round(sum(r["completions/clipped_ratio"] * 8 for r in steps))
    # every finished rubric completion was judged once, through the scripted server
    assert srv.count("judge") == summary["rewards"]["rubric_reward"]["scored"] > 0
    assert summary["judge_usage"]["judge"]["calls"] == srv.count("judge")
    export = json.loads((out / "dataset" / "export.json").read_text())
    assert summary["train_examples"] == export["examples"]["train"] > 0

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(out / "final")
    diff = sum((a - b).abs().sum().item() for a, b in zip(after.parameters(), before.parameters(), strict=True))
    assert diff > 0  # the policy moved

    # rerunning with a later max_steps resumes from the last checkpoint
    again = run_train(tiny_cfg(tiny_model_dir, run_dir, "grpo.max_steps=3"), out, base_urls=urls)
    assert again["global_step"] == 3 and again["resumed_from"].endswith("checkpoint-2")
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "reward" in x][-1] == 3

    # resuming the directory on other data is refused before any model is loaded
    with pytest.raises(ConfigError, match="different"):
        run_train(tiny_cfg(tiny_model_dir, run_dir, "data.max_examples=1"), out, base_urls=urls)


def test_training_input_without_accepted_examples_is_a_clear_error(tiny_model_dir, tmp_path, server):
    from train.export import DatasetError
    from train.trainer import run_train

    empty = write_run(tmp_path / "empty", [])
    with pytest.raises(DatasetError, match="no accepted example"):
        run_train(tiny_cfg(tiny_model_dir, empty), tmp_path / "t", base_urls={"default": "http://127.0.0.1:9/v1"})


def test_eval_reports_mean_best_and_truncation(tiny_model_dir, run_dir, server, tmp_path):
    from train.config import EvalConfig, EvalSet
    from train.evaluate import run_eval
    from train.export import export_dataset

    export_dataset([run_dir], tmp_path / "ds", test_fraction=0.34)
    srv = server(judge_script)
    cfg = EvalConfig(
        models=[str(tiny_model_dir)],
        labels=["tiny"],
        sets=[
            EvalSet(name="in_domain", dataset=str(tmp_path / "ds"), split="test"),
            EvalSet(name="all", dataset=str(tmp_path / "ds"), split="all"),
        ],
        k=3,
        max_completion_length=8,
        batch_size=2,
    )
    cfg.llm.endpoints["default"].max_retries = 0
    results = run_eval(cfg, tmp_path / "eval", base_urls={"default": srv.base_url})
    assert [(r.label, r.set) for r in results] == [("tiny", "in_domain"), ("tiny", "all")]
    comps = [json.loads(x) for x in (tmp_path / "eval" / "completions.jsonl").read_text().splitlines()]
    for r in results:
        mine = [c for c in comps if c["set"] == r.set]
        assert len(mine) == r.examples * 3
        assert r.truncation_rate == pytest.approx(sum(c["truncated"] for c in mine) / len(mine))
        assert all(c["score"] == 0.0 for c in mine if c["truncated"])
        by_ex: dict[str, list[float]] = {}
        for c in mine:
            by_ex.setdefault(c["example_id"], []).append(c["score"])
        assert r.mean_at_k == pytest.approx(sum(sum(v) / len(v) for v in by_ex.values()) / len(by_ex))
        assert r.best_at_k == pytest.approx(sum(max(v) for v in by_ex.values()) / len(by_ex))
        assert r.best_at_k >= r.mean_at_k
    rows = [
        json.loads(x)
        for sp in ("train", "test")
        for x in (tmp_path / "ds" / "jsonl" / f"{sp}.jsonl").read_text().splitlines()
    ]
    exact = {r["example_id"] for r in rows if r["verifiable"]}
    finished_rubric = [c for c in comps if not c["truncated"] and c["example_id"] not in exact]
    # the judge saw finished rubric answers only (identical texts are served from its cache)
    assert 0 < srv.count("judge") <= len(finished_rubric) or not finished_rubric
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "| tiny | in_domain |" in md and "mean@k" in md
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 1000


@pytest.mark.slow
def test_one_grpo_step_of_the_embedded_model_with_lora(run_dir, server, tmp_path):
    """The real Qwen2.5-Coder-0.5B-Instruct (dequantized from the project's GGUF), one step."""
    from inner.sdk.errors import ModelWeightsError
    from train.trainer import run_train

    try:
        from train.policy import embedded_checkpoint

        embedded_checkpoint()
    except ModelWeightsError as exc:
        pytest.skip(f"embedded GGUF unavailable (needs the local extra): {exc}")
    srv = server(judge_script)
    cfg = train_config(
        f"data.runs=[{run_dir}]",
        "policy.lora.enabled=true",
        "grpo.max_steps=1",
        "grpo.per_device_train_batch_size=2",
        "grpo.num_generations=2",
        "grpo.max_completion_length=16",
        "grpo.learning_rate=1e-4",
        "grpo.save_steps=1",
    )
    summary = run_train(cfg, tmp_path / "train", base_urls={"default": srv.base_url})
    assert summary["global_step"] == 1
    assert (tmp_path / "train" / "checkpoint-1" / "adapter_config.json").is_file()
    assert (tmp_path / "train" / "final" / "model.safetensors").is_file()  # LoRA merged into the base
    step = next(json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines() if "reward" in x)
    assert 0 < step["completions/mean_length"] <= 16  # grpo.max_completion_length bounds generation
    # TRL's truncation rate and the rewards' own truncation count agree (2 completions in the
    # step); only finished rubric answers reach the judge (a repeated text is served from its cache)
    truncated = sum(v["truncated"] for v in summary["rewards"].values())
    assert truncated == round(step["completions/clipped_ratio"] * 2)
    assert srv.count("judge") <= summary["rewards"]["rubric_reward"]["scored"] <= 2 - truncated
