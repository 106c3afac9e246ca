"""The live progress bar of a generation run (rich).

Shows documents done / total, accepted, the rounds in flight, LLM calls sent and cached, and
generated tokens per second. Disabled with ``progress=false`` (e.g. in CI logs).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from inner.engine.loop import LoopObserver
from inner.engine.records import Trajectory
from inner.llm.client import UsageMeter


class RichProgress(LoopObserver):
    """A :class:`LoopObserver` that drives a rich progress bar.

    Args:
        total: documents in the run (including those finished earlier).
        done: documents already finished (skipped on resume).
        accepted: accepted documents among ``done``.
        usage: the client's meter, read for calls and tokens.
        enabled: draw the bar at all.
    """

    def __init__(self, *, total: int, done: int, accepted: int, usage: UsageMeter, enabled: bool = True) -> None:
        self.usage = usage
        self.accepted = accepted
        self.rounds: dict[str, int] = {}
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]documents"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.progress.add_task("generate", total=total, completed=done, info="")

    def refresh(self) -> None:
        u = self.usage
        calls = u.total_calls
        cached = sum(r.cached_calls for r in u.roles.values())
        tps = u.live_completion_tokens / max(1e-6, time.perf_counter() - self.t0)
        in_flight = ",".join(f"r{r}" for r in sorted(self.rounds.values()))
        info = (
            f"accepted {self.accepted} | rounds in flight [{in_flight or '-'}] | "
            f"calls {calls} (+{cached} cached) | {tps:.1f} tok/s"
        )
        self.progress.update(self.task, info=info)

    def round_started(self, doc_id: str, round_no: int) -> None:
        self.rounds[doc_id] = round_no
        self.refresh()

    def document_finished(self, traj: Trajectory) -> None:
        self.rounds.pop(traj.doc_id, None)
        self.accepted += traj.status == "accepted"
        self.progress.advance(self.task)
        self.refresh()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.progress.stop()
