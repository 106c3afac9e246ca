"""Embedded-server benchmark: llama-server (continuous batching) against llama-cpp-python's server.

Both servers are started by the project's own backend code (``inner.llm.backends.start_backend``,
``llm=local``, the embedded Qwen2.5-Coder-0.5B-Instruct Q4_K_M), one fresh server per
measurement. Each request is realistic for the inner loop: a system prompt, an excerpt of
``--excerpt-chars`` characters (about 750 tokens by default) from a document of the shipped
corpus ``experiments/corpora/cs/*.txt``, and a question; ``--max-tokens`` completion tokens are
generated (end-of-sequence is banned with ``logit_bias`` so every completion has the same
length on both servers). ``C`` requests are kept in flight (a closed loop) until
``--rounds * C`` requests are done.

Figures per (server, concurrency): aggregate completion tokens/s and prompt tokens/s (token
counts from the responses' ``usage``, divided by the wall time of the measurement), mean
request latency, prompt tokens served from llama-server's prompt cache, and the 1-minute load
average before and after (the machine may be shared; ``--autogroup-nice -20`` gives each server
nearly all of the CPU when other sessions are busy). Measurements
alternate between the servers in one sitting (server order flips every repetition) so that
load from other processes hits both alike.

Run from the repository root::

    .venv/bin/python experiments/bench/embedded_server.py                  # 1, 4, 8 in flight
    .venv/bin/python experiments/bench/embedded_server.py --levels 4 --reps 1 \\
        --servers llama-server --set llm.backend.extra_args=[-ub,256]      # one variant
    .venv/bin/python experiments/bench/embedded_server.py --shared-excerpt  # prefix-cache case

``--shared-excerpt`` gives every request of a measurement the same excerpt (different
questions after it), as the roles of one round do; ``--vary-system`` alternates two system
prompts before it, one per wave of ``C`` requests (as when the next role of a round reads
the excerpt the previous one read), so only ``--cache-reuse`` (chunks after a differing prefix)
can reuse it. ``--n K`` asks for ``K`` completions per request (llama-server's ``n``: the prompt is
processed once and its KV cache copied to ``K - 1`` more slots, child ``j`` sampled with seed + j),
with ``C / K`` requests in flight, as the ``K`` attempts of a solver could be sent. Results: a Markdown table on stdout and
one JSON line per measurement in ``--out`` (default ``runs/bench-embedded/results.jsonl``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CORPUS = ROOT / "experiments" / "corpora" / "cs"
SYSTEM = "You are a careful research assistant. Answer from the document excerpt, precisely and in full sentences."
#: a second role's system prompt (``--vary-system``): same excerpt, different prefix, as when the
#: challenger, quality verifier and strong solver of one round read the same excerpt
SYSTEM_2 = "You are a strict reviewer of exam questions. Read the document excerpt and answer the question about it."
QUESTIONS = (
    "What problem does this excerpt address, and what approach does it take?",
    "Summarize the main technical contribution described here and its assumptions.",
    "Which quantities or components are defined in this excerpt, and how do they relate?",
    "What evidence or argument does the excerpt give for its claims?",
    "What are the limitations or open questions implied by this excerpt?",
    "Explain the method described here step by step to a graduate student.",
    "How would you test the central claim of this excerpt experimentally?",
    "Which terms in this excerpt would a newcomer need defined, and what do they mean?",
)
#: Qwen2.5 end-of-sequence tokens (<|endoftext|>, <|im_end|>), banned so completions run to max_tokens.
EOS_BIAS = {"151643": -100, "151645": -100}


@dataclass
class Measurement:
    """One (server, concurrency) measurement. Token rates are aggregate: tokens / wall seconds."""

    server: str
    concurrency: int
    slots: int
    rep: int
    requests: int
    wall_s: float
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    completion_tok_s: float
    prompt_tok_s: float
    mean_latency_s: float
    load_before: float
    load_after: float
    overrides: list[str]


def excerpts(n: int, chars: int, *, seed: int = 0) -> list[str]:
    """``n`` excerpts of about ``chars`` characters, from different documents and offsets,
    starting at a paragraph and ending at a sentence boundary."""
    rng = random.Random(seed)
    texts = [p.read_text() for p in sorted(CORPUS.glob("*.txt"))]
    out = []
    for i in range(n):
        text = texts[i % len(texts)]
        body = text[text.find("\n\n") + 2 :]  # skip the header block
        start = rng.randrange(0, max(1, len(body) - chars - 1))
        para = body.find("\n\n", start)
        start = para + 2 if 0 <= para < start + chars // 2 else start
        piece = body[start : start + chars]
        end = piece.rfind(". ")
        out.append(piece[: end + 1] if end > chars // 2 else piece)
    return out


def build_cfg(server: str, slots: int, overrides: list[str]):
    """The real ``llm=local`` config with the server, slots and extra overrides."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from inner.config import GenerateConfig, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = compose(
            config_name="generate",
            overrides=["llm=local", f"llm.backend.server={server}", f"llm.backend.slots={slots}", *overrides],
        )
    cfg = OmegaConf.to_object(dcfg)
    assert isinstance(cfg, GenerateConfig)
    return cfg.llm


async def _measure(url: str, prompts: list[list[dict]], concurrency: int, max_tokens: int, model: str, n: int = 1):
    import httpx

    sem = asyncio.Semaphore(concurrency)
    results: list[dict] = []

    async def one(i: int, messages: list[dict], client: httpx.AsyncClient) -> None:
        async with sem:
            t = time.perf_counter()
            r = await client.post(
                f"{url}/chat/completions",
                json={
                    "model": model,
                    "messages": messages,
                    "max_tokens": max_tokens,
                    "temperature": 0.7,
                    "seed": i,
                    "logit_bias": EOS_BIAS,
                    **({"n": n} if n > 1 else {}),
                },
            )
            r.raise_for_status()
            body = r.json()
            assert len(body["choices"]) == n, f"asked for {n} completions, got {len(body['choices'])}"
            usage = body["usage"]
            if n > 1:
                # llama-server's usage counts one choice only; every choice runs to max_tokens
                # (EOS is banned), and the prompt counts once per choice, as n requests would
                assert all(c["finish_reason"] == "length" for c in body["choices"])
                usage = {**usage, "prompt_tokens": n * usage["prompt_tokens"], "completion_tokens": n * max_tokens}
            results.append(
                {
                    "latency_s": time.perf_counter() - t,
                    "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": usage["completion_tokens"],
                    "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                }
            )

    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=64)) as client:
        # warm-up (excluded): the first decode allocates buffers
        await client.post(
            f"{url}/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, m, client) for i, m in enumerate(prompts)))
        wall = time.perf_counter() - t0
    return wall, results


def _prioritize_server(nice: int) -> None:
    """Give the server started by this process the autogroup nice value ``nice``.

    The server runs in its own session, so with ``kernel.sched_autogroup_enabled=1`` the CPU is
    shared between sessions first and a process's own nice value hardly matters; the
    autogroup's does (``/proc/<pid>/autogroup``; negative values need root).
    """
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            (stat.parent / "autogroup").write_text(str(nice))


def run_one(
    server: str,
    concurrency: int,
    rep: int,
    *,
    args: argparse.Namespace,
    log_dir: Path,
) -> Measurement:
    """Start a fresh ``server`` with ``slots = concurrency``, measure, stop it."""
    from inner.llm.backends import start_backend

    slots = args.slots or concurrency
    cfg = build_cfg(server, slots, args.set)
    # --n K: each request asks for K completions of one prompt, so K times fewer requests
    n = args.rounds * concurrency // args.n
    seed = 1000 * rep + concurrency
    if args.shared_excerpt:
        pieces = excerpts(1, args.excerpt_chars, seed=seed) * n
    else:
        pieces = excerpts(n, args.excerpt_chars, seed=seed)
    prompts = [
        [
            {"role": "system", "content": SYSTEM_2 if args.vary_system and (i // concurrency) % 2 else SYSTEM},
            {"role": "user", "content": f"Document excerpt:\n{p}\n\nQuestion: {QUESTIONS[i % len(QUESTIONS)]}"},
        ]
        for i, p in enumerate(pieces)
    ]
    model = cfg.endpoints["default"].model
    load_before = os.getloadavg()[0]
    with start_backend(cfg, log_dir=log_dir) as urls:
        if args.autogroup_nice is not None:
            _prioritize_server(args.autogroup_nice)
        wall, res = asyncio.run(
            _measure(urls["default"], prompts, max(1, concurrency // args.n), args.max_tokens, model, args.n)
        )
    load_after = os.getloadavg()[0]
    pt = sum(r["prompt_tokens"] for r in res)
    ct = sum(r["completion_tokens"] for r in res)
    return Measurement(
        server=server,
        concurrency=concurrency,
        slots=slots if server == "llama-server" else 1,
        rep=rep,
        requests=len(res),
        wall_s=round(wall, 2),
        prompt_tokens=pt,
        completion_tokens=ct,
        cached_prompt_tokens=sum(r["cached"] for r in res),
        completion_tok_s=round(ct / wall, 2),
        prompt_tok_s=round(pt / wall, 2),
        mean_latency_s=round(statistics.mean(r["latency_s"] for r in res), 2),
        load_before=round(load_before, 2),
        load_after=round(load_after, 2),
        overrides=list(args.set),
    )


def table(ms: list[Measurement]) -> str:
    """Markdown table: mean over repetitions per (concurrency, server), plus new/old ratios."""
    lines = [
        "| in flight | server | reps | completion tok/s | prompt tok/s | mean latency s | cached prompt tok |",
        "|---|---|---|---|---|---|---|",
    ]
    by: dict[tuple[int, str], list[Measurement]] = {}
    for m in ms:
        by.setdefault((m.concurrency, m.server), []).append(m)
    for (c, s), group in sorted(by.items()):
        ctok = [m.completion_tok_s for m in group]
        ptok = [m.prompt_tok_s for m in group]
        spread = f" ({min(ctok):.1f}-{max(ctok):.1f})" if len(group) > 1 else ""
        lines.append(
            f"| {c} | {s} | {len(group)} | {statistics.mean(ctok):.2f}{spread} | {statistics.mean(ptok):.1f} | "
            f"{statistics.mean(m.mean_latency_s for m in group):.1f} | "
            f"{sum(m.cached_prompt_tokens for m in group)}/{sum(m.prompt_tokens for m in group)} |"
        )
    for c in sorted({m.concurrency for m in ms}):
        new, old = by.get((c, "llama-server")), by.get((c, "llama-cpp-python"))
        if new and old:
            ratio = statistics.mean(m.completion_tok_s for m in new) / statistics.mean(m.completion_tok_s for m in old)
            lines.append(f"\nat {c} in flight: llama-server / llama-cpp-python completion tok/s = {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,4,8", help="comma-separated concurrencies")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per (server, level), alternating")
    ap.add_argument("--rounds", type=int, default=2, help="requests per measurement = rounds x concurrency")
    ap.add_argument("--servers", default="llama-server,llama-cpp-python")
    ap.add_argument("--slots", type=int, default=0, help="llama-server slots; 0 = the concurrency")
    ap.add_argument("--excerpt-chars", type=int, default=3000, help="about 4 characters per token")
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--shared-excerpt", action="store_true", help="one excerpt for all requests")
    ap.add_argument(
        "--autogroup-nice", type=int, default=None, help="e.g. -20 on a shared machine: the server's CPU priority"
    )
    ap.add_argument("--n", type=int, default=1, help="completions per request (llama-server's n)")
    ap.add_argument("--vary-system", action="store_true", help="alternate two system prompts per wave")
    ap.add_argument("--set", action="append", default=[], help="extra Hydra override (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-embedded" / "results.jsonl")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    servers = args.servers.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = args.out.parent
    ms: list[Measurement] = []
    for c in (int(x) for x in args.levels.split(",")):
        for rep in range(args.reps):
            for server in servers if rep % 2 == 0 else servers[::-1]:
                m = run_one(server, c, rep, args=args, log_dir=log_dir)
                ms.append(m)
                print(
                    f"{server:17s} in flight {c} rep {rep}: {m.completion_tok_s:6.2f} completion tok/s, "
                    f"{m.prompt_tok_s:7.1f} prompt tok/s, {m.wall_s:6.1f} s, cached {m.cached_prompt_tokens}, "
                    f"load {m.load_before:.1f}->{m.load_after:.1f}",
                    flush=True,
                )
                with args.out.open("a") as f:
                    row = {
                        **asdict(m),
                        "shared_excerpt": args.shared_excerpt,
                        "vary_system": args.vary_system,
                        "n": args.n,
                    }
                    f.write(json.dumps(row) + "\n")
    print()
    print(table(ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
