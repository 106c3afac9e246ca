"""Fault injection: a generation run against a server where about 10 % of requests fail in
every way a real endpoint or gateway fails (5xx and 429, timeouts, dropped connections, an
HTML page or a broken JSON body with status 200, no choices, empty content, malformed JSON
content), over more than 1,000 requests through the real client and the sandboxed baseline
harness. Then a rerun against a healthy server.

What must hold: no crash; every failure typed and counted (``calls.jsonl`` lines with an
error kind = ``stats.json`` failures, by kind); no fault is taken for a reply; nothing that
failed is cached; the rerun finishes every document, writes no duplicate example, and sends
no request for a document the first run finished.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from inner.engine.records import RunWriter
from tests.conftest import compose_config, run, scenario, write_corpus
from tests.helpers.records import read_jsonl
from tests.scenario import MARK, RoundPlan
from tests.scripted_server import Reply

N_DOCS = 80  # x 14 calls per accepted document = 1,120 calls without faults
TIMEOUT_S = 0.5
JSON_ROLES = ("quality_verifier", "judge")  # structured calls made through client.complete_json

#: fault kind -> (the reply, the client's error kind it must end in when it persists)
FAULTS: dict[str, tuple[Reply, str]] = {
    "http_500": (Reply(status=500), "status"),
    "http_503": (Reply(status=503), "status"),
    "http_429": (Reply(status=429, headers={"retry-after": "0.1"}), "status"),
    "timeout": (Reply(content="late", delay_s=TIMEOUT_S + 0.7), "timeout"),
    "drop": (Reply(drop=True), "connection"),
    "html_200": (Reply(raw_body="<html><body>502 Bad Gateway</body></html>", content_type="text/html"), "bad_response"),
    "broken_json_200": (Reply(raw_body='{"id": "x", "choices": [', content_type="application/json"), "bad_response"),
    "no_choices": (Reply(no_choices=True), "bad_response"),
    "empty_content": (Reply(content=""), "empty"),
    "malformed_content": (Reply(content="Sure! Here is the JSON: {grades: [oops"), "schema"),
}
TRANSPORT = [k for k in FAULTS if k != "malformed_content"]


class FaultyServerScript:
    """Wraps a scenario; about ``rate`` of requests get a fault instead of the answer.

    Two kinds of faults:

    - *transient*: every ``1/rate``-th request (by arrival) gets the next fault of the cycle
      (malformed JSON content only for the structured roles); a retry usually succeeds.
    - *sticky*: ``sticky`` maps a document marker to ``(role, fault)``: every request of that
      role for that document gets the fault, on every attempt (retries and the JSON repair
      included), so it must end in a typed failure of that fault's kind.

    ``injected`` counts faults sent, by kind; ``answered`` counts requests answered normally.
    """

    def __init__(self, inner: Any, *, rate: float, sticky: dict[str, tuple[str, str]]) -> None:
        self.inner, self.every, self.sticky = inner, round(1 / rate), sticky
        self.n = 0
        self.injected: Counter[str] = Counter()
        self.answered = 0
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Any:
        marker = _marker_of(body)
        kinds = list(FAULTS) if role in JSON_ROLES else TRANSPORT
        with self._lock:
            self.n += 1
            if marker in self.sticky and self.sticky[marker][0] == role:
                kind: str | None = self.sticky[marker][1]
            elif self.n % self.every == 0:
                kind = kinds[(self.n // self.every) % len(kinds)]
            else:
                kind = None
            if kind is not None:
                self.injected[kind] += 1
            else:
                self.answered += 1
        if kind is None:
            return self.inner(role, body)
        if kind == "malformed_content":
            self.inner(role, body)  # keep the scenario's round bookkeeping
        return FAULTS[kind][0]


def _marker_of(body: dict[str, Any]) -> str | None:
    m = MARK.search(json.dumps(body["messages"]))
    return m.group(0) if m else None


@pytest.mark.timeout(180)
def test_ten_percent_faults_over_a_thousand_calls_then_a_healthy_rerun(server, tmp_path):
    markers = [f"MARK-F{i:03d}" for i in range(N_DOCS)]
    corpus = write_corpus(tmp_path / "corpus", markers)
    cfg = compose_config(
        f"task.corpus={corpus}",
        "progress=false",
        "inner.max_rounds=1",
        "inner.max_concurrent_documents=16",
        "llm.endpoints.default.max_retries=1",
        f"llm.endpoints.default.timeout_s={TIMEOUT_S}",
    )
    run_dir = tmp_path / "run"
    # one document per fault kind fails for good: the challenger (its first call) for the
    # transport faults, the quality check (a structured call) for malformed JSON content
    sticky = {m: ("challenger", k) for m, k in zip(markers, TRANSPORT, strict=False)}
    sticky[markers[len(TRANSPORT)]] = ("quality_verifier", "malformed_content")
    faulty = FaultyServerScript(scenario(RoundPlan()), rate=0.1, sticky=sticky)
    srv = server(faulty)
    stats = run(cfg, run_dir, srv)  # no crash

    # -- the mix: >= 1,000 requests, about 10 % faults, every kind injected -------------------
    total = srv.count()
    assert total >= 1000
    injected = sum(faulty.injected.values())
    assert 0.07 <= injected / total <= 0.2, (injected, total)
    assert set(faulty.injected) == set(FAULTS), faulty.injected
    assert faulty.answered + injected == total

    # -- every failure typed and counted --------------------------------------------------------
    calls = read_jsonl(run_dir / "calls.jsonl")
    failed = [c for c in calls if c["error"]]
    kinds = Counter(c["error"] for c in failed)
    assert set(kinds) <= {"status", "timeout", "connection", "bad_response", "empty", "schema"}
    assert stats["failures"] == len(failed) == sum(u["failures"] for u in stats["this_invocation"].values()), (
        stats["failures_by_kind"],
        failed,
    )
    assert stats["failures_by_kind"] == dict(kinds)
    # the sticky faults persisted through the retries: every kind of failure is there
    assert set(kinds) == {"status", "timeout", "connection", "bad_response", "empty", "schema"}, kinds
    assert kinds["status"] >= 3 and kinds["bad_response"] >= 3
    # no fault was taken for a reply: each request answered normally (plus each malformed
    # but well-formed 200) is exactly one logged completion
    sent_ok = [c for c in calls if not c["error"] and not c["cached"]]
    assert len(sent_ok) == faulty.answered + faulty.injected["malformed_content"]
    # a persisting failure consumed max_retries + 1 faulty requests of its kind (retries happened)
    by_client_kind: Counter[str] = Counter()
    for k, n in faulty.injected.items():
        by_client_kind[FAULTS[k][1]] += n
    for k, n in kinds.items():
        assert 2 * n <= by_client_kind[k], (k, n, by_client_kind)

    # -- failed replies are never cached ---------------------------------------------------------
    cache_text = "".join(p.read_text() for p in (run_dir / "llm_cache").glob("segment-*.jsonl"))
    cached_keys = {json.loads(line)["key"] for line in cache_text.splitlines()}
    assert not {c["key"] for c in failed} & cached_keys
    assert "Bad Gateway" not in cache_text and '"text": ""' not in cache_text

    # -- documents: finished or error (redone), never a harness crash -----------------------------
    trajs = RunWriter(run_dir).load_trajectories()
    statuses = Counter(t.status for t in trajs)
    assert set(statuses) <= {"accepted", "exhausted", "error"}, statuses
    assert stats["errored"] == statuses["error"] > 0
    for t in trajs:
        if t.status == "error":
            assert t.error and ("LLM" in t.error or "judge" in t.error), t.error
    finished_first = {t.doc_id for t in trajs if t.finished}
    first_dataset = read_jsonl(run_dir / "dataset.jsonl")

    # -- a healthy rerun finishes everything, with no duplicate and no repeated work -------------
    healthy = server(scenario(RoundPlan()))
    stats2 = run(cfg, run_dir, healthy)
    assert stats2["errored"] == 0 and stats2["finished"] == N_DOCS
    trajs2 = {t.doc_id: t for t in RunWriter(run_dir).load_trajectories()}
    assert all(t.finished for t in trajs2.values())
    redone_markers = {_marker_of(b) for _, b in healthy.requests}
    finished_markers = {m for m in markers if any(m.lower() in d for d in finished_first)}
    assert not redone_markers & finished_markers  # 0 new calls for documents finished before
    assert healthy.count() > 0
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    ids = [e["example_id"] for e in dataset]
    assert len(ids) == len(set(ids)) == stats2["accepted"]
    assert dataset[: len(first_dataset)] == first_dataset  # appended, never rewritten
    assert {e["doc_id"] for e in dataset} == {d for d, t in trajs2.items() if t.status == "accepted"}
    print(  # the figures for a closing note (pytest -s)
        f"\nfault mix: {dict(faulty.injected)} in {total} requests ({injected / total:.1%}); "
        f"typed failures {dict(kinds)}; first run {dict(statuses)}; healthy rerun: {healthy.count()} requests, "
        f"{stats2['accepted']} accepted of {stats2['finished']}"
    )
