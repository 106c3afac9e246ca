"""Dataset export: run directories written with the project's record writers -> a Hugging Face
dataset that loads back with ``datasets.load_dataset``, split by document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.train import legal_doc_ids, make_example, write_run

pytestmark = pytest.mark.train


def test_export_loads_back_split_by_document_with_card(tmp_path):
    datasets = pytest.importorskip("datasets")
    from train.export import export_dataset

    docs = legal_doc_ids(6)
    exs = [make_example(d, i) for d in docs for i in range(2)] + [make_example(docs[0], 9, verifiable=True)]
    run_a = write_run(tmp_path / "run-a", exs[:7])
    run_b = write_run(tmp_path / "run-b", exs[5:])  # overlaps run-a by two examples
    out = tmp_path / "export"
    summary = export_dataset([run_a, run_b], out, test_fraction=0.34, seed=0)

    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "test"}
    assert len(ds["train"]) + len(ds["test"]) == len(exs) == 13
    assert summary["duplicates_dropped"] == 2
    train_docs, test_docs = set(ds["train"]["doc_id"]), set(ds["test"]["doc_id"])
    assert train_docs and test_docs and not train_docs & test_docs
    assert len(test_docs) == 2  # round(0.34 * 6)
    row = next(r for r in ds["train"].to_list() + ds["test"].to_list() if r["verifiable"])
    assert row["reference_answer"] == "0.5"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["question"] in row["prompt"][1]["content"] and row["context"] in row["prompt"][1]["content"]
    assert row["rubric"][2] == {"id": "p1", "criterion": "confuses plaintiff and defendant", "weight": -4}
    assert row["harness_id"] == "baseline@test" and row["run"] in ("run-a", "run-b")
    assert json.loads(row["gate"])["weak_avg_max"] == 0.75  # gate=lenient, from config.yaml
    assert json.loads(row["models"])["judge"]
    assert len(set(ds["train"]["example_id"]) | set(ds["test"]["example_id"])) == 13

    jsonl = [json.loads(x) for x in (out / "jsonl" / "test.jsonl").read_text().splitlines()]
    assert sorted(r["example_id"] for r in jsonl) == sorted(ds["test"]["example_id"])
    card = (out / "README.md").read_text()
    assert f"| train | {len(ds['train'])} | {len(train_docs)} |" in card
    assert f"| test | {len(ds['test'])} | {len(test_docs)} |" in card
    assert "weak_avg_max=0.75" in card
    assert "Public domain" in card  # the legal corpus licence, read from its SOURCES.md
    assert "unknown (no SOURCES.md entry)" not in card


def test_split_is_deterministic_and_independent_of_run_order(tmp_path):
    pytest.importorskip("datasets")
    from train.export import export_dataset, split_documents

    docs = legal_doc_ids(8)
    run_a = write_run(tmp_path / "a", [make_example(d, 0) for d in docs[:4]])
    run_b = write_run(tmp_path / "b", [make_example(d, 0) for d in docs[4:]])
    export_dataset([run_a, run_b], tmp_path / "x1", test_fraction=0.25)
    export_dataset([run_b, run_a], tmp_path / "x2", test_fraction=0.25)

    def test_docs(p: Path) -> set[str]:
        return {json.loads(x)["doc_id"] for x in (p / "jsonl" / "test.jsonl").read_text().splitlines()}

    assert test_docs(tmp_path / "x1") == test_docs(tmp_path / "x2")
    assert len(test_docs(tmp_path / "x1")) == 2
    by_seed = {
        frozenset(d for d, s in split_documents(docs, test_fraction=0.25, seed=seed).items() if s == "test")
        for seed in range(5)
    }
    assert len(by_seed) > 1  # the seed salts the hash


def test_no_accepted_example_is_a_clear_error(tmp_path):
    pytest.importorskip("pandas")  # the train extra (export_dataset writes parquet through pandas)
    from inner.sdk.errors import ConfigError
    from train.export import DatasetError, export_dataset, main

    empty = write_run(tmp_path / "empty", [])
    with pytest.raises(DatasetError, match="no accepted example"):
        export_dataset([empty], tmp_path / "out")
    with pytest.raises(DatasetError, match="does not exist"):
        export_dataset([tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(SystemExit) as exc:
        main([str(empty), "--out", str(tmp_path / "out")])
    assert exc.value.code == 1
    full = write_run(tmp_path / "full", [make_example(legal_doc_ids(1)[0], 0)])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_dataset([full], tmp_path / "busy")


def test_split_rule_keeps_both_sides_nonempty():
    from train.export import split_documents

    assert set(split_documents(["a", "b"], test_fraction=0.1).values()) == {"train", "test"}
    assert set(split_documents(["a"], test_fraction=0.5).values()) == {"train"}
    assert set(split_documents(["a", "b", "c"], test_fraction=0.0).values()) == {"train"}
    many = split_documents([f"d{i}" for i in range(100)], test_fraction=0.2)
    assert sum(v == "test" for v in many.values()) == 20
