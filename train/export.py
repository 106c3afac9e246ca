"""Dataset export: accepted examples of one or more run directories -> a Hugging Face dataset.

``autodata-export-dataset RUN_DIR [RUN_DIR ...] --out DIR`` reads each run's ``dataset.jsonl``
(:class:`inner.engine.records.Example`, one accepted example a line) and ``config.yaml`` (the resolved
config and identity written by :func:`inner.engine.run.write_run_config`) and writes::

    DIR/data/train.parquet   DIR/data/test.parquet     (what ``datasets.load_dataset(DIR)`` reads)
    DIR/jsonl/train.jsonl    DIR/jsonl/test.jsonl      (the same rows, one JSON object a line)
    DIR/README.md            dataset card: counts, gate, models, harnesses, corpus licenses
    DIR/export.json          the same facts, machine-readable

Columns (one row per example): ``example_id`` (``<doc_id>:<12 hex of sha256(question)>``,
stable across reruns), ``prompt`` (chat messages: the frozen closed-book solver prompt,
``inner/evaluator/prompts/solver.md``, with the example's context and question), ``context``,
``question``, ``rubric`` (``[{id, criterion, weight}]``), ``reference_answer``, ``verifiable``
(exact-answer example), ``question_type``, ``task``, ``doc_id``, ``run``, ``harness_id``,
``method``, ``models`` and ``gate`` (JSON strings from the run's identity), ``round``,
``weak_avg``, ``strong_avg``, ``gap``.

Split: by document, never by example, so that no document has examples on both sides. Each
document gets the key sha256(``seed:doc_id``); the ``round(test_fraction * n_docs)`` documents
with the smallest keys (at least one and at most ``n_docs - 1`` when there are two or more
documents) form the test split. The split depends only on the set of document ids and the seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inner.engine.documents import slugify
from inner.engine.records import Example, RunWriter
from inner.evaluator import INNER_PROMPTS
from inner.io import atomic_write_text
from inner.paths import resolve_path
from inner.sdk.errors import AutodataError, ConfigError
from inner.sdk.templates import render

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class DatasetError(AutodataError):
    """The export input holds no accepted example, or an exported dataset is missing or
    malformed. The message names the path and what to do."""


def solver_prompt(context: str, question: str) -> list[dict[str, str]]:
    """The chat prompt a policy is trained and evaluated on: the frozen closed-book solver
    prompt (``inner/evaluator/prompts/solver.md``, the weak solver's view: no document), so the policy
    answers exactly what the weak solver was asked. Shape: ``[system, user]`` messages."""
    return render(INNER_PROMPTS / "solver.md", document_block="", context=context, question=question)


@dataclass
class RunInfo:
    """What the export needs from one run directory's ``config.yaml``."""

    path: Path
    examples: list[Example]
    harness_id: str = "unknown"
    method: str = "unknown"
    models: dict[str, str] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    task: str = "unknown"
    corpus: str | None = None


def _role_models(config: dict[str, Any], identity: dict[str, Any]) -> dict[str, str]:
    """role -> model name, from the resolved ``llm`` config (endpoint of each role)."""
    llm = config.get("llm") or {}
    endpoints = llm.get("endpoints") or {}
    roles = llm.get("roles") or {}
    out: dict[str, str] = {}
    for role, rc in roles.items():
        if isinstance(rc, dict) and rc.get("endpoint") in endpoints:
            out[role] = endpoints[rc["endpoint"]].get("model", "?")
    if not out:  # older config.yaml: only the endpoint -> model map of the identity
        out = {f"endpoint:{k}": v for k, v in (identity.get("models") or {}).items()}
    return out


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories among ``paths``: a directory with ``dataset.jsonl`` or ``config.yaml``
    is a run; otherwise its immediate subdirectories that are runs (a Hydra multirun sweep).

    Raises:
        DatasetError: a path does not exist or holds no run directory.
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DatasetError(f"run directory {p} does not exist")
        if (p / "dataset.jsonl").exists() or (p / "config.yaml").exists():
            out.append(p)
            continue
        subs = sorted(
            d for d in p.iterdir() if d.is_dir() and ((d / "dataset.jsonl").exists() or (d / "config.yaml").exists())
        )
        if not subs:
            raise DatasetError(
                f"{p} is not an autodata-generate run directory (no dataset.jsonl or config.yaml, "
                "nor any subdirectory with one)"
            )
        out.extend(subs)
    return out


def read_run(path: Path) -> RunInfo:
    """Accepted examples and provenance of one run directory (read-only).

    A missing or unreadable ``config.yaml`` is not fatal (provenance columns say ``unknown``),
    but it is logged.
    """
    examples = RunWriter(path, readonly=True).load_examples()
    info = RunInfo(path=path, examples=examples)
    cfg_path = path / "config.yaml"
    try:
        doc = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("%s: no readable config.yaml (%s); provenance columns will say 'unknown'", path, exc)
        return info
    identity, config = doc.get("identity") or {}, doc.get("config") or {}
    info.harness_id = identity.get("harness_id", info.harness_id)
    info.method = identity.get("method", config.get("method", info.method))
    info.gate = identity.get("gate") or config.get("gate") or {}
    info.models = _role_models(config, identity)
    task = config.get("task") or {}
    info.task = task.get("name", info.task)
    info.corpus = task.get("corpus")
    return info


def split_documents(doc_ids: list[str], *, test_fraction: float, seed: int = 0) -> dict[str, str]:
    """doc_id -> ``train`` | ``test`` (see the module docstring for the rule).

    Args:
        doc_ids: document ids (duplicates are ignored).
        test_fraction: share of documents in the test split, in [0, 1).
        seed: salt of the hash (another seed, another split).

    Raises:
        ConfigError: ``test_fraction`` outside [0, 1).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} is invalid: must be in [0, 1)")
    docs = sorted(set(doc_ids), key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest())
    n = len(docs)
    n_test = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    return {d: ("test" if i < n_test else "train") for i, d in enumerate(docs)}


_ROW = re.compile(r"^\|(.+)\|\s*$")


def corpus_licenses(corpus: str | None) -> dict[str, str]:
    """Document slug -> license, read from the corpus's ``SOURCES.md`` table (columns ``file``
    and ``license``; see ``experiments/corpora/*/SOURCES.md``). Empty if there is none."""
    if not corpus:
        return {}
    path = resolve_path(corpus) / "SOURCES.md"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    header: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line.strip())
        if not m:
            header = None
            continue
        cells = [c.strip() for c in m.group(1).split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if "file" in header and "license" in header and len(cells) == len(header):
            name = cells[header.index("file")]
            out[slugify(Path(name).stem)] = cells[header.index("license")]
    return out


def _doc_slug(doc_id: str) -> str:
    """``<slug>-<8 hex>`` -> ``<slug>`` (:func:`inner.engine.documents.make_doc_id`)."""
    head, _, tail = doc_id.rpartition("-")
    return head if head and re.fullmatch(r"[0-9a-f]{8}", tail) else doc_id


def example_row(ex: Example, run: RunInfo) -> dict[str, Any]:
    """One dataset row (columns in the module docstring)."""
    return {
        "example_id": ex.example_id,
        "prompt": solver_prompt(ex.context, ex.question),
        "context": ex.context,
        "question": ex.question,
        "rubric": [{"id": c.id, "criterion": c.criterion, "weight": int(c.weight)} for c in ex.rubric],
        "reference_answer": ex.reference_answer,
        "verifiable": bool(ex.verifiable),
        "question_type": ex.question_type,
        "task": ex.task or run.task,
        "doc_id": ex.doc_id,
        "run": run.path.name,
        "harness_id": ex.harness_id or run.harness_id,
        "method": ex.method or run.method,
        "models": json.dumps(run.models, sort_keys=True),
        "gate": json.dumps(run.gate, sort_keys=True),
        "round": int(ex.round),
        "weak_avg": float(ex.weak_avg),
        "strong_avg": float(ex.strong_avg),
        "gap": float(ex.gap),
    }


def export_dataset(
    run_dirs: list[Path], out: Path, *, test_fraction: float = 0.2, seed: int = 0, overwrite: bool = False
) -> dict[str, Any]:
    """Export the accepted examples of ``run_dirs`` to ``out`` (layout in the module docstring).

    An example id met twice (the same question on the same document in two runs) is kept once,
    from the first run given.

    Args:
        run_dirs: run directories (or sweep directories holding runs).
        out: target directory; must be absent or empty unless ``overwrite``.
        test_fraction: share of documents in the test split, in [0, 1).
        seed: salt of the document hash of the split.
        overwrite: replace the files of an earlier export in ``out``.

    Returns:
        The export summary (also ``out/export.json``): counts per split, documents, gates,
        models, harnesses, licenses, duplicates dropped.

    Raises:
        DatasetError: no run directory, or no accepted example in any of them.
        ConfigError: ``out`` is not empty and ``overwrite`` is false; bad ``test_fraction``.
    """
    import pandas as pd

    runs = [read_run(p) for p in expand_run_dirs([Path(p) for p in run_dirs])]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    dropped = 0
    for run in runs:
        for ex in run.examples:
            if ex.example_id in seen:
                dropped += 1
                continue
            seen.add(ex.example_id)
            rows.append(example_row(ex, run))
    if not rows:
        listed = ", ".join(str(r.path) for r in runs)
        raise DatasetError(
            f"no accepted example in {listed}: dataset.jsonl is missing or empty. Generate data first "
            "(autodata-generate ...) or pass run directories whose dataset.jsonl has accepted examples"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out={out} exists and is not empty: choose a new directory or pass --overwrite")
    split_of = split_documents([r["doc_id"] for r in rows], test_fraction=test_fraction, seed=seed)
    by_split = {s: [r for r in rows if split_of[r["doc_id"]] == s] for s in SPLITS}
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "jsonl").mkdir(parents=True, exist_ok=True)
    written = []
    for s, part in by_split.items():
        for stale in (out / "data" / f"{s}.parquet", out / "jsonl" / f"{s}.jsonl"):
            stale.unlink(missing_ok=True)
        if not part:
            continue
        pd.DataFrame(part).to_parquet(out / "data" / f"{s}.parquet", index=False)
        atomic_write_text(out / "jsonl" / f"{s}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
        written.append(s)
    summary = _summary(runs, by_split, dropped, test_fraction=test_fraction, seed=seed)
    atomic_write_text(out / "export.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "README.md", dataset_card(summary, written))
    log.info(
        "exported %d examples (%s) from %d run(s) to %s",
        len(rows), ", ".join(f"{s} {len(by_split[s])}" for s in SPLITS), len(runs), out,
    )  # fmt: skip
    return summary


def _summary(
    runs: list[RunInfo], by_split: dict[str, list[dict[str, Any]]], dropped: int, *, test_fraction: float, seed: int
) -> dict[str, Any]:
    licenses: dict[str, Counter[str]] = {}
    slug_license: dict[str, dict[str, str]] = {}
    for run in runs:
        if run.corpus and run.corpus not in slug_license:
            slug_license[run.corpus] = corpus_licenses(run.corpus)
    for run in runs:
        table = slug_license.get(run.corpus or "", {})
        docs = {ex.doc_id for ex in run.examples}
        for d in sorted(docs):
            lic = table.get(_doc_slug(d), "unknown (no SOURCES.md entry)")
            licenses.setdefault(run.corpus or "unknown", Counter())[lic] += 1
    all_rows = [r for part in by_split.values() for r in part]
    return {
        "examples": {s: len(part) for s, part in by_split.items()},
        "documents": {s: len({r["doc_id"] for r in part}) for s, part in by_split.items()},
        "verifiable": {s: sum(r["verifiable"] for r in part) for s, part in by_split.items()},
        "tasks": dict(Counter(r["task"] for r in all_rows)),
        "question_types": dict(Counter(r["question_type"] for r in all_rows).most_common()),
        "duplicates_dropped": dropped,
        "split": {"by": "document", "test_fraction": test_fraction, "seed": seed},
        "runs": [
            {
                "path": str(r.path),
                "examples": len(r.examples),
                "harness_id": r.harness_id,
                "method": r.method,
                "task": r.task,
                "corpus": r.corpus,
                "models": r.models,
                "gate": r.gate,
            }
            for r in runs
        ],
        "licenses": {corpus: dict(c) for corpus, c in licenses.items()},
    }


def dataset_card(summary: dict[str, Any], splits: list[str]) -> str:
    """The ``README.md`` dataset card: YAML front matter that tells ``datasets`` where each
    split lies, then counts, provenance (runs, harnesses, models, gate) and licenses."""
    front = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}.parquet"} for s in splits],
            }
        ],
        "task_categories": ["question-answering", "text-generation"],
        "tags": ["autodata", "agentic-self-instruct", "rubric", "grpo"],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [
        "# Autodata dataset",
        "",
        "Accepted examples of Autodata runs (Agentic Self-Instruct, arXiv 2606.25996): each row has a",
        "context, a question, a reference answer and a weighted rubric (negative weights are pitfalls),",
        "and the closed-book solver prompt as chat messages (`prompt`). Rewards for training grade an",
        "answer with the frozen judge against the row's own rubric (`train/rewards.py`).",
        "",
        "## Counts",
        "",
        "| split | examples | documents | verifiable |",
        "|---|---|---|---|",
    ]
    for s in SPLITS:
        lines.append(f"| {s} | {summary['examples'][s]} | {summary['documents'][s]} | {summary['verifiable'][s]} |")
    sp = summary["split"]
    lines += [
        "",
        f"Split by document (no document on both sides), test fraction {sp['test_fraction']}, seed {sp['seed']}.",
        f"Duplicate examples dropped: {summary['duplicates_dropped']}.",
        "",
        "Tasks: " + ", ".join(f"{k} ({v})" for k, v in summary["tasks"].items()),
        "",
        "Question types: " + ", ".join(f"{k} ({v})" for k, v in summary["question_types"].items()),
        "",
        "## Provenance",
        "",
    ]
    for r in summary["runs"]:
        models = ", ".join(f"{k}={v}" for k, v in sorted(r["models"].items())) or "unknown"
        gate = ", ".join(f"{k}={v}" for k, v in r["gate"].items()) or "unknown"
        lines += [
            f"- run `{r['path']}`: {r['examples']} accepted, method {r['method']}, harness `{r['harness_id']}`, "
            f"task {r['task']}, corpus `{r['corpus']}`",
            f"  - models: {models}",
            f"  - gate: {gate}",
        ]
    lines += ["", "## Licenses", "", "Documents used, by corpus and license (from the corpus `SOURCES.md`):", ""]
    for corpus, lic in summary["licenses"].items():
        for name, n in lic.items():
            lines.append(f"- `{corpus}`: {name}: {n} document(s)")
    lines += [
        "",
        "The examples are derived from these documents; keep their licenses' attribution terms.",
        "",
    ]
    return "\n".join(lines)


def load_split(dataset_dir: Path, split: str) -> Any:
    """One split of an exported dataset as a ``datasets.Dataset`` (read from the parquet file,
    no network).

    Raises:
        DatasetError: not an export (no ``data/``), the split is missing, or it is empty.
    """
    from datasets import load_dataset

    dataset_dir = Path(dataset_dir)
    path = dataset_dir / "data" / f"{split}.parquet"
    if not path.is_file():
        if not (dataset_dir / "data").is_dir():
            raise DatasetError(
                f"{dataset_dir} is not an exported dataset (no data/ directory): run autodata-export-dataset first"
            )
        raise DatasetError(
            f"{dataset_dir} has no {split} split ({path} is missing): export with more documents or another "
            "--test-fraction"
        )
    ds = load_dataset("parquet", data_files={split: str(path)}, split=split)
    if len(ds) == 0:
        raise DatasetError(f"{path} holds no example")
    return ds


def main(argv: list[str] | None = None) -> None:
    """``autodata-export-dataset``: console-script entry point."""
    ap = argparse.ArgumentParser(
        prog="autodata-export-dataset",
        description="Export the accepted examples of Autodata run directories to a Hugging Face dataset "
        "(parquet + JSONL + dataset card), split by document.",
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (or sweep directories of runs)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (absent or empty)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="share of documents in the test split")
    ap.add_argument("--seed", type=int, default=0, help="salt of the document hash of the split")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = export_dataset(
            args.runs, args.out, test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite
        )
    except AutodataError as exc:
        log.error("%s", exc)
        sys.exit(1)
    print(json.dumps({"out": str(args.out), "examples": summary["examples"], "documents": summary["documents"]}))


if __name__ == "__main__":
    main()
