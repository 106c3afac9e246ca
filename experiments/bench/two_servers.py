"""Two local servers on one machine (``llm=ladder``): threads, polling and slots.

Starts the ladder's two llama-servers (Qwen2.5-Coder-0.5B and -1.5B, ``conf/llm/ladder.yaml``)
through the project's own backend code (``inner.llm.backends.start_backend``) with one setting
(``--set`` Hydra overrides, e.g. ``llm.backend.n_threads=2 llm.backend.poll=50``), then keeps
``--in-flight`` requests in flight on *each* server at once (both loaded together, as in a
ladder run: weak solver on one, strong solver on the other) until ``--rounds * in-flight``
requests per server are done. Requests are those of ``embedded_server.py`` (a system prompt,
an excerpt of ``--excerpt-chars`` characters of the shipped cs corpus, a question;
end-of-sequence banned so every completion has ``--max-tokens`` tokens).

``--busy`` runs one extra process that spins on one core for the whole measurement (another
job holding a core, as on a shared machine).

Figures per server: completion tokens/s (its completion tokens / the wall time until its last
request ended), prompt tokens/s, mean latency; and the 1-minute load average before. One JSON
line per measurement in ``--out``.

Run from the repository root::

    .venv/bin/python experiments/bench/two_servers.py --set llm.backend.n_threads=2   # all cores each
    .venv/bin/python experiments/bench/two_servers.py                                 # the defaults
    .venv/bin/python experiments/bench/two_servers.py --busy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, ROOT / "experiments" / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from embedded_server import QUESTIONS, SYSTEM, _measure, excerpts  # noqa: E402


def ladder_cfg(overrides: list[str]):
    """The real ``llm=ladder`` config with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from inner.config import GenerateConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose(config_name="generate", overrides=["llm=ladder", *overrides])
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, GenerateConfig)
    return cfg.llm


def main(argv: list[str] | None = None) -> int:
    """CLI; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in-flight", type=int, default=2, help="requests in flight on each server")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--excerpt-chars", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--busy", action="store_true", help="one extra process spins on a core meanwhile")
    ap.add_argument("--only", choices=["default", "large"], help="load one server only (the other idles)")
    ap.add_argument("--set", action="append", default=[], help="Hydra override (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-two-servers" / "results.jsonl")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from inner.llm.backends import local_models, start_backend

    cfg = ladder_cfg(args.set)
    models = {m.endpoints[0]: m for m in local_models(cfg)}
    n = args.rounds * args.in_flight
    pieces = excerpts(n, args.excerpt_chars, seed=7)
    prompts = [
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Document excerpt:\n{p}\n\nQuestion: {QUESTIONS[i % len(QUESTIONS)]}"},
        ]
        for i, p in enumerate(pieces)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    busy = None
    with start_backend(cfg, log_dir=args.out.parent) as urls:
        if args.busy:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:

            async def both() -> list[tuple[float, list[dict]]]:
                names = [args.only] if args.only else list(urls)
                return list(
                    await asyncio.gather(
                        *(
                            _measure(urls[e], prompts, args.in_flight, args.max_tokens, cfg.endpoints[e].model)
                            for e in names
                        )
                    )
                )

            t0 = time.perf_counter()
            results = asyncio.run(both())
            wall = time.perf_counter() - t0
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    names = [args.only] if args.only else list(urls)
    for e, (w, res) in zip(names, results, strict=True):
        m = models[e]
        ct = sum(r["completion_tokens"] for r in res)
        pt = sum(r["prompt_tokens"] for r in res)
        row = {
            "server": m.name,
            "threads": m.n_threads,
            "threads_batch": m.n_threads_batch,
            "poll": m.poll,
            "slots": m.slots,
            "in_flight": args.in_flight,
            "busy": args.busy,
            "requests": len(res),
            "wall_s": round(w, 2),
            "completion_tok_s": round(ct / w, 2),
            "prompt_tok_s": round(pt / w, 1),
            "mean_latency_s": round(statistics.mean(r["latency_s"] for r in res), 2),
            "load_before": round(load_before, 2),
            "overrides": args.set,
        }
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"total wall {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
