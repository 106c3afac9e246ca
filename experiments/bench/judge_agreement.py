"""The frozen judge against hand-checked grades, on the model ladder (issue 17).

Does the rubric path separate a weak from a strong solver at this scale? That depends on the
judge: a judge that passes a wrong answer's criteria makes every round TOO_EASY. This script
measures, on judged answers of a real rubric-path run, how often each judge model agrees with a
human's grade of the same (answer, criterion) pair, and whether its scores put the strong
solver's answers above the weak solver's.

Three steps, each a subcommand (run from the repository root):

1. ``sample``: read the trajectories of one or more rubric-path runs (rounds that a judge
   graded, not verifiable rounds) and write a seeded sample of ``--n`` judged answers of each
   run, half weak and half strong where the run has both, one JSON line each (``--out``, default
   ``experiments/bench/judge_items.jsonl``): ``item`` (``run:doc#round/side/index``), ``context``,
   ``question``, ``rubric``, ``answer``, ``reference_answer`` (for the human only: the judge
   never sees it), ``side`` and ``run_grades`` (the run's own judge, ``{criterion id: 0|1}``).
2. By hand: one JSON line per (item, criterion) in ``experiments/bench/judge_hand_grades.jsonl``:
   ``{"item", "id", "hand": 0|1, "why"}``, graded as the frozen judge prompt asks (1 only if the
   answer satisfies the criterion completely; for a pitfall, 1 if the answer makes the mistake),
   with the reference answer and the source document at hand.
3. ``judge``: start the ladder's two servers (``inner.llm.backends.start_backend``) and grade every
   sampled answer with the frozen judge (:func:`inner.evaluator.roles.judge_answer`, the same
   prompt, schema and binary rule as the evaluator) once per judge endpoint (``--endpoints``,
   default both: ``default`` = Qwen2.5-Coder-0.5B, ``large`` = 1.5B), then print, per judge:
   agreement with the hand grades (fraction of pairs, Cohen's kappa), false passes (judge 1, hand
   0) and false fails, and the mean rubric score of weak and of strong answers with the hand
   grades' own means beside them. ``report`` prints the same from a saved ``--judged`` file
   (each ``judge`` adds its judges to it). ``--prompt FILE`` tries another judge prompt (the same
   placeholders) in place of the frozen one, e.g. ``experiments/bench/judge_strict.md``.

Sources: the judge prompt and the binary "0 when in doubt" rule are the paper's
(``inner/evaluator/prompts/judge.md``); Cohen's kappa: Cohen (1960), "A coefficient of agreement
for nominal scales".
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
ITEMS = HERE / "judge_items.jsonl"
HAND = HERE / "judge_hand_grades.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON object of every non-empty line of ``path``.

    Raises:
        OSError / json.JSONDecodeError: the file is missing or a line is not JSON.
    """
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judged_answers(run_dir: Path) -> list[dict[str, Any]]:
    """Every answer a judge graded in ``run_dir/trajectories/*.json``: one dict per answer."""
    out = []
    for path in sorted((run_dir / "trajectories").glob("*.json")):
        traj = json.loads(path.read_text(encoding="utf-8"))
        for rnd in traj.get("rounds") or []:
            ch = rnd.get("challenge") or {}
            if rnd.get("verifiable") or not ch.get("rubric"):
                continue
            for side in ("weak", "strong"):
                for att in rnd.get(side) or []:
                    if not att.get("grades") or att.get("score") is None:
                        continue
                    out.append({
                        "item": f"{run_dir.name}:{traj['doc_id']}#{rnd['round']}/{side}/{att['index']}",
                        "run": run_dir.name,
                        "side": side,
                        "context": ch.get("context", ""),
                        "question": ch["question"],
                        "reference_answer": ch.get("reference_answer", ""),
                        "rubric": ch["rubric"],
                        "answer": att["answer"],
                        "run_grades": {g["id"]: g["score"] for g in att["grades"]},
                        "run_score": att["score"],
                    })  # fmt: skip
    return out


def sample(runs: list[Path], n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of ``n`` judged answers of each run, half from each side where both exist."""
    picked = []
    for run in runs:
        pool = judged_answers(run)
        rng = random.Random(seed)
        by_side = {s: [a for a in pool if a["side"] == s] for s in ("weak", "strong")}
        for v in by_side.values():
            rng.shuffle(v)
        take_strong = min(len(by_side["strong"]), n // 2)
        picked += sorted(by_side["strong"][:take_strong] + by_side["weak"][: n - take_strong], key=lambda a: a["item"])
    return picked


def kappa(pairs: list[tuple[int, int]]) -> float | None:
    """Cohen's kappa (Cohen 1960) of binary ``(judge, hand)`` pairs, in [-1, 1]: observed
    agreement beyond the agreement the two marginal rates give by chance; ``None`` for no pairs
    or when chance agreement is 1 (both always say the same value)."""
    if not pairs:
        return None
    n = len(pairs)
    po = sum(a == b for a, b in pairs) / n
    pa, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def score(rubric: list[dict[str, Any]], grades: dict[str, float]) -> float:
    """The frozen rubric score in [0, 1] (:func:`inner.evaluator.scoring.rubric_score`) of
    ``grades`` (``{criterion id: 0 | 1}``) on ``rubric`` (criteria as stored in trajectories)."""
    from inner.evaluator.scoring import rubric_score
    from inner.sdk.contract import RubricItem

    return rubric_score([RubricItem(**c) for c in rubric], grades)


def report(items: list[dict[str, Any]], hand: list[dict[str, Any]], judged: dict[str, dict[str, dict]]) -> str:
    """The agreement table; ``judged`` is ``{judge name: {item: {criterion id: 0|1}}}``."""
    hand_by = {(h["item"], h["id"]): int(h["hand"]) for h in hand}
    graded = [it for it in items if all((it["item"], c["id"]) in hand_by for c in it["rubric"])]
    lines = [
        f"{len(graded)} answers ({sum(it['side'] == 'weak' for it in graded)} weak, "
        f"{sum(it['side'] == 'strong' for it in graded)} strong), "
        f"{sum(len(it['rubric']) for it in graded)} (answer, criterion) pairs hand-graded",
        "judge            pairs  agree  kappa  false pass  false fail  score weak / strong (hand: weak / strong)",
    ]
    hand_scores = {it["item"]: score(it["rubric"], {c["id"]: hand_by[(it["item"], c["id"])] for c in it["rubric"]})
                   for it in graded}  # fmt: skip

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    hw = mean([hand_scores[it["item"]] for it in graded if it["side"] == "weak"])
    hs = mean([hand_scores[it["item"]] for it in graded if it["side"] == "strong"])
    for name, grades in judged.items():
        pairs, scores = [], {"weak": [], "strong": []}
        for it in graded:
            g = grades.get(it["item"])
            if not g:
                continue
            for c in it["rubric"]:
                pairs.append((int(g.get(c["id"], 0)), hand_by[(it["item"], c["id"])]))
            scores[it["side"]].append(score(it["rubric"], g))
        if not pairs:
            continue
        agree = sum(a == b for a, b in pairs) / len(pairs)
        k = kappa(pairs)
        fp = sum(a == 1 and b == 0 for a, b in pairs)
        fn = sum(a == 0 and b == 1 for a, b in pairs)
        hand0 = sum(b == 0 for _, b in pairs)
        hand1 = len(pairs) - hand0
        lines.append(
            f"{name:<16} {len(pairs):>5}  {agree:5.2f}  {'n/a' if k is None else f'{k:5.2f}':>5}  "
            f"{fp:>3} of {hand0:<4}  {fn:>3} of {hand1:<4}  {mean(scores['weak']):.2f} / {mean(scores['strong']):.2f}"
            f"   ({hw:.2f} / {hs:.2f})"
        )
    return "\n".join(lines)


async def judge_all(
    items: list[dict[str, Any]], endpoints: list[str], out_dir: Path, prompt: Path | None = None
) -> dict[str, dict[str, dict]]:
    """Grade every item with the frozen judge on each endpoint of the ladder; with ``prompt``,
    the judge's prompt is that file instead of ``inner/evaluator/prompts/judge.md`` (the same
    placeholders, schema and binary rule: a candidate for a stricter frozen prompt)."""
    from experiments.bench.two_servers import ladder_cfg
    from inner.evaluator import roles
    from inner.evaluator.roles import judge_answer
    from inner.llm.backends import start_backend
    from inner.llm.cache import ResponseCache
    from inner.llm.client import LLMClient
    from inner.sdk.contract import RubricItem

    cfg = ladder_cfg([])
    cache = ResponseCache(out_dir / "llm_cache")
    if prompt is not None:  # the frozen function's rubric lines, rendered into the other file
        frozen_render = roles.render
        roles.render = lambda path, **kw: frozen_render(prompt if path.name == "judge.md" else path, **kw)

    async def by(ep: str, urls: dict[str, Any]) -> tuple[str, dict[str, dict]]:
        """Every item judged by the judge on endpoint ``ep`` (the two servers work at once)."""
        mine = copy.deepcopy(cfg)
        mine.roles.judge.endpoint = ep
        client = LLMClient(mine, base_urls=urls, cache=cache)
        t0 = time.perf_counter()

        async def one(it: dict[str, Any]) -> tuple[str, dict]:
            v = await judge_answer(
                client, context=it["context"], question=it["question"],
                rubric=[RubricItem(**c) for c in it["rubric"]], answer=it["answer"],
            )  # fmt: skip
            return it["item"], {g.id: g.score for g in v.grades}

        try:
            res = await asyncio.gather(*(one(it) for it in items))
        finally:
            await client.aclose()
        name = f"{ep} ({cfg.endpoints[ep].model})" + (f" + {prompt.name}" if prompt else "")
        print(f"{name}: {len(items)} answers judged in {time.perf_counter() - t0:.0f} s", flush=True)
        return name, dict(res)

    with start_backend(cfg, log_dir=out_dir) as urls:
        return dict(await asyncio.gather(*(by(ep, urls) for ep in endpoints)))


def main(argv: list[str] | None = None) -> int:
    """CLI; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample judged answers from rubric-path runs")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--n", type=int, default=24, help="answers per run")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=ITEMS)
    for name in ("judge", "report"):
        p = sub.add_parser(name)
        p.add_argument("--items", type=Path, default=ITEMS)
        p.add_argument("--hand", type=Path, default=HAND)
        p.add_argument("--judged", type=Path, default=ROOT / "runs" / "bench-judge" / "judged.json")
    sub.choices["judge"].add_argument("--endpoints", nargs="+", default=["default", "large"])
    sub.choices["judge"].add_argument("--prompt", type=Path, help="a judge prompt to try instead of the frozen one")
    args = ap.parse_args(argv)
    if args.cmd == "sample":
        items = sample(args.runs, args.n, args.seed)
        args.out.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
        print(f"{len(items)} answers -> {args.out}")
        return 0
    items = read_jsonl(args.items)
    judged = {"in the run": {it["item"]: it["run_grades"] for it in items}}
    if args.cmd == "judge":
        args.judged.parent.mkdir(parents=True, exist_ok=True)
        fresh = asyncio.run(judge_all(items, args.endpoints, args.judged.parent, args.prompt))
        saved = json.loads(args.judged.read_text(encoding="utf-8")) if args.judged.is_file() else {}
        args.judged.write_text(json.dumps(saved | fresh, indent=1), encoding="utf-8")
        judged |= saved | fresh
    elif args.judged.is_file():
        judged |= json.loads(args.judged.read_text(encoding="utf-8"))
    hand = read_jsonl(args.hand) if args.hand.is_file() else []
    for run in sorted({it["run"] for it in items}):
        print(f"== {run}")
        print(report([it for it in items if it["run"] == run], hand, judged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
