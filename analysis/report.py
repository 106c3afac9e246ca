"""``autodata-report``: figures, tables and pages from the records on disk.

``run`` may be a generation run (``autodata-generate``), a meta run (``autodata-evolve``) or a
Hydra multirun directory of meta runs. Everything goes to ``<run>/report/`` and is tied
together by ``report.md``:

- meta run: ``curve.png``/``.svg``, ``lineage.html``, dataset statistics and a methods table of
  the starting vs the best harness on the validation documents;
- generation run: dataset statistics (``stats_*.png``, ``stats.md``), and a methods table when
  ``runs=[...]`` names other runs over the same documents (e.g. CoT Self-Instruct);
- multirun: ``multirun_curve.png``/``.svg`` (mean and spread) and a table of final scores;
- optionally a question-type taxonomy (``taxonomy.*``; needs an LLM endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.curves import admission_section, final_scores, plot_curve, plot_multirun
from analysis.dataset_stats import markdown_table, plot_dataset_stats, stats_markdown
from analysis.lineage_report import write_lineage_html
from analysis.loaders import (
    GenerationRun,
    MetaRunRecords,
    is_generation_run,
    is_meta_run,
    load_generation_run,
    load_meta_run,
)
from analysis.methods import METHOD_COLUMNS, write_methods
from analysis.taxonomy import TaxonomyItem, build_taxonomy, write_taxonomy
from inner.config import LLMConfig, _check
from inner.llm.cache import ResponseCache
from inner.llm.client import LLMClient
from inner.paths import resolve_path
from inner.sdk.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TaxonomyConfig:
    """Attributes:
    enabled: build the taxonomy (needs an LLM; the backend starts only if there are items).
    population: ``accepted`` (accepted examples) or ``all`` (every valid challenge).
    sample_size: examples shown in the proposal phase (stratified by the challenger's label).
    """

    enabled: bool = True
    population: str = "accepted"
    sample_size: int = 40

    def __post_init__(self) -> None:
        _check(
            self.population in ("accepted", "all"),
            "taxonomy.population",
            self.population,
            "use 'accepted' or 'all'",
        )


@dataclass
class ReportConfig:
    """Root config of ``autodata-report``.

    Attributes:
        run: the run directory to report on (required).
        runs: more generation runs for the methods table (same documents).
    """

    run: str = "???"
    runs: list[str] = field(default_factory=list)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)


def is_multirun(path: Path) -> bool:
    """A directory of meta runs (a Hydra ``-m`` sweep directory)."""
    return not is_meta_run(path) and any(is_meta_run(p) for p in path.iterdir() if p.is_dir())


def meta_eval_runs(meta: MetaRunRecords) -> list[GenerationRun]:
    """The validation evaluations of the starting and the best harness (same documents)."""
    if not meta.archive:
        return []
    root = meta.archive[0]
    best = max(meta.archive, key=lambda e: (e["val_pass_rate"], -e["iteration"]))
    out = []
    for entry in [root] + ([best] if best is not root else []):
        content = entry["harness_id"].split("@")[-1]
        evals = [
            p.parent
            for p in sorted((meta.path / "evals" / content).glob("*/identity.json"))
            if json.loads(p.read_text()).get("split") == "val"
        ]
        if evals:
            out.append(load_generation_run(evals[-1]))
    return out


def taxonomy_items(runs: list[GenerationRun], population: str) -> list[TaxonomyItem]:
    """The items to classify; ids are ``<run index>/<example id>`` (or ``/<doc>/r<round>``),
    unique even when two runs share documents."""
    items = []
    for i, run in enumerate(runs):
        if population == "accepted":
            items += [TaxonomyItem(f"{i}/{e.example_id}", e.question, e.context, e.question_type) for e in run.examples]
            continue
        for t in run.trajectories:
            for r in t.rounds:
                if r.challenge is not None:
                    ch = r.challenge
                    items.append(TaxonomyItem(f"{i}/{t.doc_id}/r{r.round}", ch.question, ch.context, ch.question_type))
    return items


async def _taxonomy(
    cfg: ReportConfig, runs: list[GenerationRun], out: Path, base_urls: dict[str, str] | None
) -> tuple[list[Path], str]:
    """Classify the runs' examples; starts the LLM backend only when there is something to
    classify and no ``base_urls`` are given. Returns the written paths and a one-line note."""
    items = taxonomy_items(runs, cfg.taxonomy.population)
    if not items:
        return [], f"No {cfg.taxonomy.population} examples to classify: taxonomy skipped."
    from inner.llm.backends import start_backend

    backend: Any = contextlib.nullcontext(base_urls) if base_urls is not None else start_backend(cfg.llm, log_dir=out)
    with backend as urls:
        client = LLMClient(
            cfg.llm,
            base_urls=urls,
            cache=ResponseCache(out / "llm_cache"),
            call_log=out / "calls.jsonl",
        )
        try:
            tax = await build_taxonomy(client, items, sample_size=cfg.taxonomy.sample_size)
        finally:
            await client.aclose()
    paths = write_taxonomy(tax, out, population=cfg.taxonomy.population)
    return (
        paths,
        f"{len(tax.types)} types over {len(items)} items; parse failures {tax.parse_failures}.",
    )


def build_report(cfg: ReportConfig, *, base_urls: dict[str, str] | None = None) -> Path:
    """Write ``<run>/report/`` and return the path of ``report.md``.

    Raises:
        ConfigError: ``run`` is missing or is not a run directory.
    """
    if cfg.run in ("???", ""):
        raise ConfigError("run=??? : give the run directory, e.g. autodata-report run=runs/demo")
    run = resolve_path(cfg.run)
    if not run.is_dir():
        raise ConfigError(f"run={cfg.run!r} is not a directory")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = [f"# Autodata report — {run.name}\n", f"Source: `{run}`\n"]
    gen_runs: list[GenerationRun] = []

    if is_multirun(run):
        members = [load_meta_run(p) for p in sorted(run.iterdir()) if p.is_dir() and is_meta_run(p)]
        paths = plot_multirun(members, out)
        md += [
            "## Pass rate across runs\n",
            f"![multirun curve]({paths[0].name}) ([svg]({paths[1].name}))\n",
        ]
        md += [
            "Final scores per member:\n",
            markdown_table(final_scores(members), ["member", "iterations", "admitted", "baseline", "best"]),
        ]
        (out / "final_scores.md").write_text(
            markdown_table(final_scores(members), ["member", "iterations", "admitted", "baseline", "best"])
        )
    elif is_meta_run(run):
        meta = load_meta_run(run)
        curve = plot_curve(meta, out)
        lineage = write_lineage_html(meta, out)
        n_adm = sum(h["status"] == "admitted" for h in meta.history)
        md += [
            f"## {meta.score_label[0].upper()}{meta.score_label[1:]} over iterations\n",
            f"![curve]({curve[0].name}) ([svg]({curve[1].name})) — {n_adm} of {len(meta.history)} candidates admitted; "
            f"starting harness {meta.baseline}.\n",
            *admission_section(meta),
            "## Lineage\n",
            f"[lineage.html]({lineage.name}): the tree of harnesses; select one to read its diff and the analysis behind it.\n",
        ]
        gen_runs = meta_eval_runs(meta)
    elif is_generation_run(run):
        gen_runs = [load_generation_run(run)]
    else:
        raise ConfigError(f"run={cfg.run!r} is neither a generation run, a meta run nor a multirun directory")

    extra = [load_generation_run(resolve_path(p)) for p in cfg.runs]
    if gen_runs:
        main = gen_runs[-1]
        stats_paths = plot_dataset_stats(main, out)
        (out / "stats.md").write_text(stats_markdown(main))
        md += [
            f"## Dataset statistics ({main.method_label}, `{main.path.name}`)\n",
            stats_markdown(main),
        ]
        md += [f"![{p.stem}]({p.name})\n" for p in stats_paths]
    if len(gen_runs) + len(extra) >= 2:
        md_path, png, rows = write_methods(gen_runs + extra, out)
        md += [
            "## Methods on the same documents\n",
            markdown_table(rows, METHOD_COLUMNS),
            f"![methods]({png.name}) ([table]({md_path.name}))\n",
        ]
    if cfg.taxonomy.enabled and gen_runs + extra:
        tax_paths, note = asyncio.run(_taxonomy(cfg, gen_runs + extra, out, base_urls))
        md += ["## Question-type taxonomy\n", note + "\n"]
        if tax_paths:
            md += ["![taxonomy](taxonomy.png) ([table](taxonomy.md), [data](taxonomy.json))\n"]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    return report


def register_configs() -> None:
    """Register ``report_schema`` with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="report_schema", node=ReportConfig)
