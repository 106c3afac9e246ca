"""The fixed evaluation set of ``meta.fitness=student_gain`` and its public / private split.

The set is an ``autodata-export-dataset`` directory (or run directories, exported into the meta
run's ``student/evalset/`` first) (:mod:`train.export`: one row per example
with ``prompt``, ``rubric``, ``reference_answer``, ``verifiable``, ``doc_id``, ...); every row of
its ``train`` and ``test`` splits is used. It is split **by document** into a public part (the
meta loop's fitness and the analyzer's bad cases) and a private part (read once, when the run
ends, to replay the best and the starting harness: the reported result). DataAgent (zjunlp,
arXiv 2605.30407) splits public : private = 1 : 3; so does the default
``meta.student.public_fraction = 0.25``. The split reuses :func:`train.export.split_documents`
(sha256 of ``seed:doc_id``): it depends only on the set of document ids and
``meta.student.split_seed``, and is recorded in the run's ``student/evalset.json``.

No document may feed both the harness's training documents and the evaluation set
(:func:`check_disjoint` raises :class:`~inner.sdk.errors.ConfigError` naming them).

Build one from run directories (for example ``autodata-generate`` runs on held-back
documents)::

    python -m meta.evalset RUN_DIR [RUN_DIR ...] --out DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inner.paths import resolve_path
from inner.sdk.errors import AutodataError, ConfigError

log = logging.getLogger(__name__)

PUBLIC, PRIVATE = "public", "private"


@dataclass
class EvalSplit:
    """The evaluation set split by document.

    Attributes:
        path: the export directory.
        public / private: rows (dicts in the export format) of each part.
        public_fraction / seed: the split's settings.
    """

    path: Path
    public: list[dict[str, Any]]
    private: list[dict[str, Any]]
    public_fraction: float
    seed: int

    def docs(self, part: str) -> list[str]:
        """Sorted document ids of ``part`` (``public`` or ``private``)."""
        return sorted({r["doc_id"] for r in getattr(self, part)})

    def identity(self) -> dict[str, Any]:
        """What names the split in the run's identity: path, settings, a hash of the example ids
        of each part and the documents of each part."""

        def digest(rows: list[dict[str, Any]]) -> str:
            return hashlib.sha256("\n".join(sorted(r["example_id"] for r in rows)).encode()).hexdigest()[:12]

        return {
            "path": str(self.path.resolve()),
            "public_fraction": self.public_fraction,
            "seed": self.seed,
            "public": {"examples": len(self.public), "hash": digest(self.public), "docs": self.docs(PUBLIC)},
            "private": {"examples": len(self.private), "hash": digest(self.private), "docs": self.docs(PRIVATE)},
        }


def load_eval_split(
    path: str | Path, *, public_fraction: float, seed: int, export_dir: Path | None = None
) -> EvalSplit:
    """Read the export at ``path`` and split it by document (module docstring).

    Args:
        path: an ``autodata-export-dataset`` directory; or run directories' parent / one run
            directory (``dataset.jsonl``), exported first into ``export_dir``.
        public_fraction: share of documents in the public part, in (0, 1).
        seed: the split's seed.
        export_dir: where run directories are exported (required for them).

    Raises:
        ConfigError: no path, a bad fraction, or fewer than two documents (no split possible).
        DatasetError: the path is not an export or holds no example.
    """
    from train.export import DatasetError, load_split, split_documents

    if not path:
        raise ConfigError(
            "meta.fitness=student_gain needs meta.student.eval_set: an autodata-export-dataset directory "
            "(build one with python -m meta.evalset RUN_DIR ... --out DIR)"
        )
    if not 0.0 < public_fraction < 1.0:
        raise ConfigError(f"meta.student.public_fraction={public_fraction} is invalid: must be in (0, 1)")
    path = resolve_path(path)
    if not (path / "data").is_dir() and export_dir is not None:
        build_eval_set([path], export_dir, overwrite=True)
        path = export_dir
    rows: list[dict[str, Any]] = []
    for part in ("train", "test"):
        try:
            rows.extend(load_split(path, part).to_list())
        except DatasetError:
            if not (path / "data").is_dir():
                raise
    if not rows:
        raise DatasetError(f"evaluation set {path} holds no example")
    docs = sorted({r["doc_id"] for r in rows})
    if len(docs) < 2:
        raise ConfigError(
            f"evaluation set {path} has {len(docs)} document(s): a public/private split by document needs at least 2"
        )
    # split_documents puts round(f * n) documents (at least one, at most n - 1) on its "test" side
    side = split_documents(docs, test_fraction=public_fraction, seed=seed)
    rows.sort(key=lambda r: r["example_id"])
    return EvalSplit(
        path=path,
        public=[r for r in rows if side[r["doc_id"]] == "test"],
        private=[r for r in rows if side[r["doc_id"]] == "train"],
        public_fraction=public_fraction,
        seed=seed,
    )


def check_disjoint(eval_docs: set[str], generation_docs: set[str], *, where: str) -> None:
    """Refuse an evaluation set that shares a document with the documents harnesses generate on.

    Raises:
        ConfigError: naming the shared document ids and the fix.
    """
    shared = sorted(eval_docs & generation_docs)
    if shared:
        raise ConfigError(
            f"the evaluation set {where} shares {len(shared)} document(s) with the run's training documents: "
            f"{', '.join(shared[:8])}{' ...' if len(shared) > 8 else ''}. A student would be scored on documents "
            "its data came from: build the evaluation set from held-back documents (python -m meta.evalset) or "
            "leave them out of the run's splits (split.*_files)"
        )


def build_eval_set(run_dirs: list[Path], out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Export the accepted examples of ``run_dirs`` into ``out`` as an evaluation set (every row
    in the export's ``train`` split; the public/private split is made by the meta loop).

    Raises:
        DatasetError: no accepted example in the runs.
        ConfigError: ``out`` is not empty and ``overwrite`` is false.
    """
    from train.export import export_dataset

    return export_dataset(run_dirs, out, test_fraction=0.0, overwrite=overwrite)


def main(argv: list[str] | None = None) -> None:
    """``python -m meta.evalset``: build an evaluation set from run directories."""
    ap = argparse.ArgumentParser(
        prog="python -m meta.evalset",
        description="Build the fixed evaluation set of meta.fitness=student_gain from run directories "
        "(accepted examples; export format). Generate them on documents the meta run will not use.",
    )
    ap.add_argument("runs", nargs="+", type=Path, help="autodata-generate run directories")
    ap.add_argument("--out", type=Path, required=True, help="output directory (absent or empty)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = build_eval_set(args.runs, args.out, overwrite=args.overwrite)
    except AutodataError as exc:
        log.error("%s", exc)
        sys.exit(1)
    print(json.dumps({"out": str(args.out), "examples": summary["examples"]["train"],
                      "documents": summary["documents"]["train"]}))  # fmt: skip


if __name__ == "__main__":
    main()
