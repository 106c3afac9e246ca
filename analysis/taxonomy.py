"""Question-type taxonomy by two-phase LLM classification (as in the Autodata paper's data
analysis): propose types on a stratified sample, consolidate them into at most 12
non-overlapping types, then assign every example to exactly one type.

Bookkeeping: every example gets exactly one type or ``unassigned`` (a parse failure after one
repair); the counts add up to the number of examples; ``parse_failures`` counts failed
proposal, consolidation and assignment calls separately.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from pydantic import BaseModel, Field, create_model  # noqa: E402

from inner.llm.client import LLMClient  # noqa: E402

MAX_TYPES = 12
UNASSIGNED = "unassigned"


class QType(BaseModel):
    """One question type: a short lower-case name and a one-line description."""

    name: str = Field(min_length=1)
    description: str = ""


class TypeList(BaseModel):
    """The proposal and consolidation replies: a non-empty list of types."""

    types: list[QType] = Field(min_length=1)


@dataclass
class TaxonomyItem:
    """One example to classify (an accepted example, or any evaluated challenge)."""

    item_id: str
    question: str
    context: str
    stratum: str  # e.g. the challenger's own question_type label


@dataclass
class Taxonomy:
    """The result: at most 12 types, ``item id -> type`` (or ``unassigned``), and parse
    failures per phase."""

    types: list[QType]
    assignments: dict[str, str]
    parse_failures: dict[str, int] = field(default_factory=lambda: {"propose": 0, "consolidate": 0, "assign": 0})

    @property
    def counts(self) -> dict[str, int]:
        out = {t.name: 0 for t in self.types}
        out[UNASSIGNED] = 0
        for v in self.assignments.values():
            out[v] = out.get(v, 0) + 1
        return out


def stratified_sample(items: list[TaxonomyItem], k: int) -> list[TaxonomyItem]:
    """Up to ``k`` items, round-robin over strata (sorted), so rare strata are represented."""
    strata: dict[str, list[TaxonomyItem]] = {}
    for it in items:
        strata.setdefault(it.stratum, []).append(it)
    queues = [strata[s] for s in sorted(strata)]
    out: list[TaxonomyItem] = []
    i = 0
    while len(out) < k and any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def _show(it: TaxonomyItem, n: int = 300) -> str:
    return f"- [{it.item_id}] {it.question[:n]}"


async def build_taxonomy(
    client: LLMClient,
    items: list[TaxonomyItem],
    *,
    role: str = "taxonomist",
    sample_size: int = 40,
    chunk: int = 10,
) -> Taxonomy:
    """Run the two phases over ``items``.

    Raises:
        ValueError: two items share an id.
        LLMCallError: a request failed after retries.
    """
    tax = Taxonomy([], {})
    if not items:
        return tax
    if len({it.item_id for it in items}) != len(items):
        raise ValueError("taxonomy items must have unique ids")
    sample = stratified_sample(items, sample_size)
    proposed: list[QType] = []
    for start in range(0, len(sample), chunk):
        block = "\n".join(_show(it) for it in sample[start : start + chunk])
        res = await client.complete_json(
            role,
            [
                {"role": "system", "content": "You classify evaluation questions by the kind of reasoning they ask for. Propose 3 to 6 question types (a short name and a one-line description each) that describe the questions below. Reply with only JSON: {\"types\": [{\"name\": ..., \"description\": ...}]}."},
                {"role": "user", "content": block},
            ],
            TypeList,
        )  # fmt: skip
        if res.value is None:
            tax.parse_failures["propose"] += 1
        else:
            proposed.extend(res.value.types)
    if not proposed:
        tax.types = [QType(name="other", description="no type could be proposed")]
    else:
        listing = "\n".join(f"- {t.name}: {t.description}" for t in proposed)
        res = await client.complete_json(
            role,
            [
                {"role": "system", "content": f"Merge these proposed question types into at most {MAX_TYPES} non-overlapping types that together cover all of them. Reply with only JSON: {{\"types\": [{{\"name\": ..., \"description\": ...}}]}}."},
                {"role": "user", "content": listing},
            ],
            TypeList,
        )  # fmt: skip
        if res.value is None:
            tax.parse_failures["consolidate"] += 1
            merged = proposed
        else:
            merged = res.value.types
        seen: dict[str, QType] = {}
        for t in merged:
            key = t.name.strip().lower()
            if key and key != UNASSIGNED and key not in seen:
                seen[key] = QType(name=key, description=t.description)
        tax.types = list(seen.values())[:MAX_TYPES] or [QType(name="other")]
    names = [t.name for t in tax.types]
    choice = Enum("TypeName", {f"t{i}": n for i, n in enumerate(names)}, type=str)  # type: ignore[misc]
    Assignment = create_model("Assignment", type=(choice, ...))
    types_text = "\n".join(f"- {t.name}: {t.description}" for t in tax.types)

    async def assign(it: TaxonomyItem) -> None:
        res = await client.complete_json(
            role,
            [
                {"role": "system", "content": f"Assign the question to exactly one of these types:\n{types_text}\nReply with only JSON: {{\"type\": <one of the names>}}."},
                {"role": "user", "content": f"Context: {it.context[:600]}\n\nQuestion: {it.question[:600]}"},
            ],
            Assignment,
        )  # fmt: skip
        if res.value is None:
            tax.parse_failures["assign"] += 1
            tax.assignments[it.item_id] = UNASSIGNED
        else:
            tax.assignments[it.item_id] = res.value.type.value  # type: ignore[attr-defined]

    await asyncio.gather(*(assign(it) for it in items))
    return tax


def write_taxonomy(tax: Taxonomy, out_dir: Path, *, population: str) -> list[Path]:
    """``taxonomy.json``, ``taxonomy.md`` and ``taxonomy.png``."""
    counts = tax.counts
    data: dict[str, Any] = {
        "population": population,
        "types": [t.model_dump() for t in tax.types],
        "counts": counts,
        "n_items": len(tax.assignments),
        "parse_failures": tax.parse_failures,
        "assignments": tax.assignments,
    }
    (out_dir / "taxonomy.json").write_text(json.dumps(data, indent=2) + "\n")
    md = [
        f"# Question-type taxonomy ({population}, {len(tax.assignments)} items)\n",
        "| type | description | count |",
        "|---|---|---|",
    ]
    desc = {t.name: t.description for t in tax.types}
    for name, c in sorted(counts.items(), key=lambda kv: -kv[1]):
        md.append(f"| {name} | {desc.get(name, '')} | {c} |")
    md.append(f"\nParse failures: {tax.parse_failures}\n")
    (out_dir / "taxonomy.md").write_text("\n".join(md) + "\n")
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
    items = sorted(counts.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:purple")
    ax.set_title(f"Question types ({population}, n={len(tax.assignments)})")
    fig.tight_layout()
    fig.savefig(out_dir / "taxonomy.png")
    plt.close(fig)
    return [out_dir / "taxonomy.json", out_dir / "taxonomy.md", out_dir / "taxonomy.png"]
