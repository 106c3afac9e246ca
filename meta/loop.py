"""The evolution loop (Autodata meta-optimization).

One iteration, top to bottom (:func:`run_iteration`)::

    select a parent from the archive (Boltzmann over validation pass rates, T = 0.1)
    evaluate the parent on a minibatch of training documents (the inner loop)
    analyzer: root-cause analysis of the parent's trajectories + the history
    implementer: SEARCH/REPLACE edits of the parent's files (code and prompts)
    apply the edits to a copy (paths outside the harness directory are rejected); a candidate
    identical to an existing lineage node is a ``duplicate``; validate it: prompt files parse,
    and one dry run in the sandbox against canned replies; an edit that fails to apply or to
    validate goes back to the implementer once with the error (``invalid-edit`` if it fails again)
    admission (meta.admission, :func:`meta.admission.decide`) on the validation documents (harnesses
    sealed, inner.sandbox.process): ``paired`` (default) tops the parent's per-document tallies up
    to meta.min_parent_runs fresh replicates, evaluates meta.replicates candidate replicates and
    admits iff T >= meta.min_gain_docs and the sign-flip p-value <= meta.alpha; ``strict`` (the
    paper's) admits iff one candidate evaluation's pass rate > one fresh parent evaluation's
    commit the candidate to the lineage (tag it if admitted), append history.jsonl + curve.jsonl
    (T, p-value, replicates and cost of the decision)

Before the first iteration the starting harness is evaluated meta.noise_reps times (its noise
floor: ``noise_floor.json``, seeding its tallies); when the run ends the best harness and the
starting one are confirmed on the sealed test split (:mod:`meta.confirm`, ``confirmation.json``).

Under ``meta.fitness=student_gain`` (the DataAgent setting) a harness is scored by the gain of a
student fine-tuned on its accepted examples: the iteration, the root's evaluation and the private
replay at the end are :mod:`meta.student`'s (hooks in :func:`run_iteration`, :func:`prepare`,
:func:`evolve`).

Iteration statuses: ``admitted``, ``rejected``, ``invalid-edit``, ``duplicate``, ``crashed``
(the candidate's own failure: every validation document crashed) and ``error`` (an
infrastructure failure, e.g. the endpoint down after retries: redone on resume; after
``meta.max_consecutive_errors`` in a row the run stops cleanly and says why).

Every evaluation has an identity: (harness content hash, evaluator config hash, document set
hash) names its directory ``evals/<content>/<evaluator>-<docs>/``, so a harness is evaluated
once on a document set whatever it is called, and only by the parent (the sandbox cannot see
the run directory). Replicate ``r > 0`` of an evaluation lives in ``.../<evaluator>-<docs>/rep-<r>/``
(its seeds and cache keys derive from ``r``: :func:`inner.llm.cache.sample_index`); replicate 0
is the directory itself. Per-document tallies of every harness are in ``tallies.json``
(:mod:`meta.tallies`). A run records its evaluator config in ``evaluator.json`` and refuses to
resume under a different one, naming the keys (``meta.allow_evaluator_change=true`` overrides).

Run state lives in the run directory: ``lineage/`` (git), ``archive.json``, ``history.jsonl``
(the ledger: one line per finished iteration), ``curve.jsonl``, ``splits.json``, ``evals/``
(one inner-loop run directory per harness and document set, resumable and shared across
iterations), ``harnesses/`` (materialized harness versions) and ``llm_cache/``. Killing the
process at any point loses nothing finished: a rerun reads the ledger, discards the refs of
half-made iterations, and redoes them with their LLM calls replayed from the cache.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from inner.engine.documents import Document, list_document_paths, load_documents
from inner.engine.executor import LOCAL, Executor, open_executor
from inner.engine.harness import harness_id, resolve_harness_dir
from inner.engine.records import Trajectory
from inner.engine.run import evaluate_harness, evaluator_identity, identity_diff, identity_hash, throughput_gc
from inner.io import StorageError, append_jsonl, atomic_write_text, read_jsonl, sweep_stale_temps
from inner.llm.client import LLMClient, UsageMeter, track_usage
from inner.sandbox.files import copy_harness, harness_content_hash, scan_harness
from inner.sandbox.process import dry_run_harness
from inner.sdk.errors import ConfigError, HarnessError
from inner.tracking import NullTracker, Tracker, build_tracker
from meta import student
from meta.admission import AdmissionDecision, decide, decision_text, noise_floor
from meta.analyze import analyze, implement
from meta.config import EvolveConfig
from meta.edit import EditError, apply_edits, check_editable, check_prompt_files, is_editable, parse_edits
from meta.lineage import Lineage
from meta.select import Archive, ArchiveEntry, select_parent
from meta.tallies import TallyStore

log = logging.getLogger(__name__)


class IterationStatus(StrEnum):
    """How an iteration ended (the ``status`` of a ``history.jsonl`` line; ``root`` marks the
    starting harness's line in ``curve.jsonl``)."""

    ADMITTED = "admitted"  # the admission rule admitted the candidate (tagged in the lineage)
    REJECTED = "rejected"  # evaluated, not admitted
    INVALID_EDIT = "invalid-edit"  # the implementer's edit did not apply or validate, twice
    DUPLICATE = "duplicate"  # the candidate equals a harness already in the lineage
    CRASHED = "crashed"  # every candidate document crashed in the sandbox (the candidate's failure)
    ERROR = "error"  # infrastructure failed (endpoint down, ...): redone on resume
    ROOT = "root"


#: the statuses of an iteration (``root`` is not one)
STATUSES = tuple(s for s in IterationStatus if s is not IterationStatus.ROOT)


# -- splits --------------------------------------------------------------------------------------
def make_splits(cfg: EvolveConfig, run_dir: Path) -> dict[str, list[str]]:
    """File names of the train / val / test splits, fixed in ``splits.json`` at the first run.

    Raises:
        ConfigError: the corpus has fewer documents than the split sizes ask for, a resumed
            run's ``splits.json`` disagrees with the corpus, or it is torn or corrupt.
    """
    path = run_dir / "splits.json"
    if path.exists():
        return read_splits(path)
    s = cfg.split
    if s.train_files or s.val_files:
        splits = {
            "train": list(s.train_files),
            "val": list(s.val_files),
            "test": list(s.test_files),
        }
    else:
        names = [p.name for p in list_document_paths(cfg.task)]
        need = s.train + s.val + s.test
        if len(names) < need:
            raise ConfigError(
                f"split.train+split.val+split.test={need} but {cfg.task.corpus} has {len(names)} documents: "
                "lower the split sizes"
            )
        random.Random(s.seed).shuffle(names)
        splits = {
            "train": names[: s.train],
            "val": names[s.train : s.train + s.val],
            "test": names[s.train + s.val : need],
        }
    overlap = set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
    if overlap:
        raise ConfigError(f"split.test_files overlap train/val: {sorted(overlap)}")
    atomic_write_text(path, json.dumps(splits, indent=2) + "\n")
    return splits


def read_splits(path: Path) -> dict[str, list[str]]:
    """The recorded ``splits.json``.

    Raises:
        ConfigError: it is torn or corrupt (never re-drawn: the test split is sealed); it is
            not touched.
    """
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(recorded.get(k), list) for k in ("train", "val", "test")):
            raise ValueError("not a train/val/test split")
    except (ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{path} is torn or corrupt ({type(exc).__name__}: {exc}); it was left as it is. Restore it (the same "
            f"splits are recorded under 'splits' in {path.parent / 'evaluator.json'}) or choose a new hydra.run.dir"
        ) from exc
    return recorded


def load_split(cfg: EvolveConfig, names: list[str]) -> list[Document]:
    """Read the documents of one split (the sealed test split only by :mod:`meta.confirm`, when
    the run ends)."""
    task = type(cfg.task)(**{**cfg.task.__dict__, "files": names, "limit": None, "order": "name"})
    return load_documents(task)


# -- state ----------------------------------------------------------------------------------------
@dataclass
class MetaRun:
    """Everything the iterations share."""

    cfg: EvolveConfig
    run_dir: Path
    client: LLMClient
    lineage: Lineage
    archive: Archive
    train: list[Document]
    val: list[Document]
    history: list[dict[str, Any]] = field(default_factory=list)
    tracker: Tracker = field(default_factory=NullTracker)
    #: where the evaluations' documents run (``executor=local|ray``); this process stays the one
    #: writer of the archive, history, tallies and lineage whatever it is
    executor: Executor = LOCAL
    _eval_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: candidate contents claimed by iterations still in flight (content -> iteration): a second
    #: iteration proposing the same content while the first is evaluated is a duplicate
    claimed: dict[str, int] = field(default_factory=dict)
    tallies: TallyStore = field(init=False)

    def __post_init__(self) -> None:
        self.tallies = TallyStore(self.run_dir / "tallies.json")

    @property
    def history_path(self) -> Path:
        return self.run_dir / "history.jsonl"

    @property
    def harness_caps(self) -> dict[str, int]:
        """``max_files`` / ``max_bytes`` of :func:`inner.sandbox.files.copy_harness` from the inner config."""
        inner = self.cfg.inner
        return {"max_files": inner.harness_max_files, "max_bytes": inner.harness_max_mb << 20}

    def materialize(self, commit: str) -> Path:
        """The files of a lineage commit as a directory under ``harnesses/``."""
        return self.lineage.materialize(commit, self.run_dir / "harnesses" / commit[:12])

    def known_contents(self) -> set[str]:
        """Content hashes of every harness already in the lineage (root, candidates)."""
        ids = [e.harness_id for e in self.archive.entries]
        ids += [h.get("candidate_harness_id") or "" for h in self.history if h.get("status") != IterationStatus.ERROR]
        return {i.split("@")[1] for i in ids if "@" in i}

    def minibatch(self, iteration: int) -> list[Document]:
        """``meta.minibatch`` training documents, sampled with the iteration's seed."""
        k = min(self.cfg.meta.minibatch, len(self.train))
        return random.Random(f"{self.cfg.meta.seed}:mb:{iteration}").sample(self.train, k)

    @functools.cached_property
    def evaluator_hash(self) -> str:
        """:func:`inner.engine.run.identity_hash` of the evaluator config of every evaluation
        (computed once per run: it hashes the frozen prompt files)."""
        return identity_hash(evaluator_identity(self.cfg.generate_config()))

    def eval_dir(self, harness_dir: Path, docs: list[Document], *, replicate: int = 0) -> Path:
        """The directory of an evaluation: ``evals/<content>/<evaluator>-<docs>[/rep-<r>]``."""
        content = harness_content_hash(harness_dir, **self.harness_caps)
        docs_key = hashlib.sha256("\n".join(sorted(d.doc_id for d in docs)).encode()).hexdigest()[:8]
        out = self.run_dir / "evals" / content / f"{self.evaluator_hash}-{docs_key}"
        return out / f"rep-{replicate}" if replicate else out

    async def evaluate(self, harness_dir: Path, docs: list[Document], split: str, *, replicate: int = 0) -> EvalOutcome:
        """Run the inner loop with the harness (sealed, one sandbox per document) on ``docs``.

        Results live in ``evals/<harness content hash>/<evaluator hash>-<doc set hash>/``
        (replicate ``r > 0``: its subdirectory ``rep-<r>/``) and are reused: a second evaluation
        of the same content and replicate on the same documents under the same evaluator reads
        the records (zero LLM calls), whatever the harness is called. Concurrent requests for
        the same evaluation wait for the first.
        """
        content = harness_content_hash(harness_dir, **self.harness_caps)
        out = self.eval_dir(harness_dir, docs, replicate=replicate)
        lock = self._eval_locks.setdefault(str(out), asyncio.Lock())
        async with lock:
            out.mkdir(parents=True, exist_ok=True)
            ident = {"harness_content": content, "evaluator": self.evaluator_hash, "docs": sorted(d.doc_id for d in docs),
                     "split": split, **({"replicate": replicate} if replicate else {})}  # fmt: skip
            if not (out / "identity.json").exists():
                atomic_write_text(out / "identity.json", json.dumps(ident, indent=1) + "\n")
            trajs, stats = await evaluate_harness(
                out,
                cfg=self.cfg.generate_config(),
                docs=docs,
                harness_dir=harness_dir,
                client=self.client,
                return_trajectories=True,
                replicate=replicate,
                executor=self.executor,
            )
            assert trajs is not None  # return_trajectories=True
            return EvalOutcome.from_trajectories(trajs, stats)

    async def parent_replicate(self, parent_dir: Path, content: str, k: int) -> dict[str, bool]:
        """Outcomes of the ``k``-th counted replicate of a harness on the validation documents
        (replicate index ``first_replicate + k``), evaluated and added to its tallies unless
        already counted. One at a time per harness (:meth:`meta.tallies.TallyStore.lock`), so
        concurrent iterations never evaluate or count a parent's top-up twice.

        Raises:
            InfrastructureError: documents failed on infrastructure (nothing is counted).
        """
        async with self.tallies.lock(content):
            r = self.tallies.first_replicate(content) + k
            have = self.tallies.replicate(content, r)
            if have is not None:
                return have
            outcome = await self.evaluate(parent_dir, self.val, "val", replicate=r)
            outcome.raise_on_errors(f"parent replicate {r}")
            self.tallies.add_replicate(content, r, outcome.outcomes())
            self.tallies.save()
            return outcome.outcomes()


class InfrastructureError(Exception):
    """An evaluation had documents that failed on infrastructure: the iteration is ``error``
    (redone on resume) and none of its replicates is counted."""


@dataclass
class EvalOutcome:
    """What admission needs from one evaluation.

    Attributes:
        pass_rate: accepted documents / documents, in [0, 1].
        n_docs / accepted / crashed / errors: document counts (``crashed``: the harness
            failed; ``errors``: infrastructure failures, redone on resume).
        crash_reason: the first crashed document's reason.
        error_reason: the first infrastructure error.
        stats: the evaluation's ``stats.json``.
        trajectories: the evaluation's trajectories.
    """

    pass_rate: float
    n_docs: int
    accepted: int
    crashed: int
    errors: int
    crash_reason: str | None = None
    error_reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    trajectories: list[Trajectory] = field(default_factory=list)

    @classmethod
    def from_trajectories(cls, trajs: list[Trajectory], stats: dict[str, Any]) -> EvalOutcome:
        """The outcome of one evaluation from its trajectories (statuses ``accepted``,
        ``crashed``, ``error``) and its ``stats.json``."""
        n = len(trajs)
        accepted = sum(t.status == "accepted" for t in trajs)
        crashed = [t for t in trajs if t.status == "crashed"]
        errors = [t for t in trajs if t.status == "error"]
        crash = (crashed[0].harness_error or crashed[0].end_reason).strip().splitlines()[-1] if crashed else None
        return cls(
            pass_rate=accepted / n if n else 0.0, n_docs=n, accepted=accepted, crashed=len(crashed),
            errors=len(errors), crash_reason=crash, error_reason=errors[0].error if errors else None,
            stats=stats, trajectories=trajs,
        )  # fmt: skip

    def outcomes(self) -> dict[str, bool]:
        """``{doc_id: passed}``: a document passes iff its status is ``accepted``."""
        return {t.doc_id: t.status == "accepted" for t in self.trajectories}

    def raise_on_errors(self, what: str) -> None:
        """Raise :class:`InfrastructureError` if documents failed on infrastructure."""
        if self.errors:
            raise InfrastructureError(
                f"{what}: {self.errors} document(s) failed on infrastructure: {self.error_reason}"
            )


def admission(candidate: EvalOutcome, parent: EvalOutcome) -> tuple[str, str | None]:
    """The paper's strict admission rule on two single evaluations (Autodata
    meta-optimization): a pure function of the two evaluations on the same validation documents
    under the same evaluator. The loop decides with :func:`meta.admission.decide`
    (``meta.admission``); this is the rule's outcome-level form, kept for callers.

    Returns:
        ``(status, reason)``: ``error`` if either evaluation has infrastructure errors (redone
        on resume); ``admitted`` iff the candidate's pass rate is strictly greater than the
        parent's; else ``crashed`` when every candidate document crashed, or ``rejected``.
    """
    if candidate.errors or parent.errors:
        which = candidate if candidate.errors else parent
        side = "candidate" if candidate.errors else "parent"
        return (
            IterationStatus.ERROR,
            f"{which.errors} {side} document(s) failed on infrastructure: {which.error_reason}",
        )
    if candidate.pass_rate > parent.pass_rate:
        return IterationStatus.ADMITTED, None
    if candidate.n_docs and candidate.crashed == candidate.n_docs:
        return IterationStatus.CRASHED, f"candidate crashed in the sandbox: {candidate.crash_reason}"
    return IterationStatus.REJECTED, (
        f"validation pass rate {candidate.pass_rate:.3f} is not strictly greater than the parent's {parent.pass_rate:.3f}"
    )


# -- edits ---------------------------------------------------------------------------------------
#: further implementer calls after an edit that fails to apply or to validate (with the error)
EDIT_REPAIRS = 1
#: the dry run's wall-clock limit: inner.harness_wall_s kept within these bounds, seconds (the lower
#: bound leaves room for a slow sandbox start on a loaded machine; no LLM waits happen in it)
DRY_RUN_TIMEOUT_S = (30.0, 120.0)


@dataclass
class EditAttempt:
    """One implementer reply applied to a scratch copy of the parent.

    Attributes:
        error: why it cannot be a candidate (parse, no match, outside, unchanged, validation);
            ``None`` if it can.
        kind: the error's kind (:class:`meta.edit.EditError` kinds, ``unchanged``, ``validation``).
        duplicate: the result equals an existing lineage node (never evaluated again).
        changed: the paths it changed; harness_id: the candidate's id.
    """

    error: str | None = None
    kind: str | None = None
    duplicate: bool = False
    changed: list[str] = field(default_factory=list)
    harness_id: str = ""


async def try_edit(
    run: MetaRun, parent_dir: Path, scratch: Path, reply: str, *, parent_content: str, iteration: int
) -> EditAttempt:
    """Apply ``reply`` to a fresh copy of ``parent_dir`` at ``scratch`` and validate the result
    before any evaluation is spent: every prompt file parses and names only placeholders the
    code passes (:func:`meta.edit.check_prompt_files`), and the harness runs once in the
    sandbox against canned replies (:func:`inner.sandbox.process.dry_run_harness`).

    A content already in the lineage, or claimed by another ``iteration`` still in flight
    (:attr:`MetaRun.claimed`), is a duplicate; a valid candidate keeps its claim."""
    shutil.rmtree(scratch, ignore_errors=True)
    copy_harness(parent_dir, scratch, **run.harness_caps)
    try:
        edits = parse_edits(reply)
        check_editable(edits, run.cfg.meta.editable)
        changed = apply_edits(edits, scratch)
    except EditError as exc:
        return EditAttempt(error=str(exc), kind=exc.kind)
    cand_id = harness_id(scratch)
    content = cand_id.split("@")[1]
    if content == parent_content:
        return EditAttempt(error="the edits leave the harness unchanged", kind="unchanged")
    claimant = run.claimed.get(content)
    if content in run.known_contents() or (claimant is not None and claimant != iteration):
        return EditAttempt(duplicate=True, harness_id=cand_id)
    run.claimed[content] = iteration  # no await since the check: two iterations cannot both pass it
    inner = run.cfg.inner
    lo, hi = DRY_RUN_TIMEOUT_S
    problem = check_prompt_files(scratch) or await dry_run_harness(
        scratch, timeout_s=min(max(inner.harness_wall_s, lo), hi), memory_mb=inner.harness_memory_mb,
        cpu_s=inner.harness_cpu_s, max_rounds=min(2, inner.max_rounds), domain=run.cfg.task.domain,
    )  # fmt: skip
    if problem is not None:
        run.claimed.pop(content, None)
        return EditAttempt(error=f"candidate fails validation: {problem}", kind="validation", harness_id=cand_id)
    return EditAttempt(changed=changed, harness_id=cand_id)


async def propose_candidate(
    run: MetaRun, i: int, parent: ArchiveEntry, parent_dir: Path, analysis: str, rec: dict[str, Any]
) -> EditAttempt | dict[str, Any]:
    """Steps 4-5 of an iteration: the implementer's edits of the parent's files (those in
    ``meta.editable``), applied to ``scratch/iter-<i>`` and validated (:func:`try_edit`); an edit
    that fails to apply or to validate goes back once (``EDIT_REPAIRS``) with its error. Replies
    and errors are added to ``rec``.

    Returns:
        the valid :class:`EditAttempt`, or the iteration's ending fields (status ``duplicate`` or
        ``invalid-edit``, with the reason).
    """
    cfg = run.cfg.meta
    files = {p: t for p, t in run.lineage.files(parent.commit).items() if is_editable(p, cfg.editable)}
    structured = cfg.edit_format == "json" or (
        cfg.edit_format == "auto"
        and run.cfg.llm.endpoints[run.cfg.llm.role("implementer").endpoint].json_mode == "llama_cpp"
    )
    scratch = run.run_dir / "scratch" / f"iter-{i:04d}"
    replies: list[str] = []
    errors: list[str] = []
    for _ in range(1 + EDIT_REPAIRS):
        reply = await implement(
            run.client, analysis=analysis, history=run.history, files=files, structured=structured,
            history_lines=cfg.history_lines, repair=(replies[-1], errors[-1]) if replies else None,
        )  # fmt: skip
        replies.append(reply)
        rec |= {"implementer_reply": reply, "implementer_replies": list(replies)}
        attempt = await try_edit(
            run, parent_dir, scratch, reply, parent_content=parent.harness_id.split("@")[1], iteration=i
        )
        if attempt.duplicate:
            return {"status": IterationStatus.DUPLICATE, "candidate_harness_id": attempt.harness_id,
                    "reason": f"the candidate's content {attempt.harness_id.split('@')[1]} equals an existing lineage node"}  # fmt: skip
        if attempt.error is None:
            break
        errors.append(attempt.error)
        rec["edit_errors"] = list(errors)
    else:
        return {"status": IterationStatus.INVALID_EDIT, "reason": errors[-1], "edit_error": attempt.kind}
    return attempt


# -- one iteration ------------------------------------------------------------------------------
async def run_iteration(run: MetaRun, i: int) -> dict[str, Any]:
    """One iteration; returns its history line (also appended to ``history.jsonl``)."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {
        "iteration": i,
        "candidate": None,
        "candidate_val": None,
        "admitted": False,
    }
    meter = UsageMeter()
    with track_usage(meter):
        try:
            body = _iterate if run.cfg.meta.fitness == "pass_rate" else student.iterate  # meta/student.py
            rec.update(await body(run, i, rec))
        except StorageError:  # the run's disk or open files, not the iteration: the run stops, one message
            raise
        except InfrastructureError as exc:  # redone on resume; nothing of it was counted
            rec.update({"status": IterationStatus.ERROR, "reason": str(exc)})
        except Exception as exc:  # an LLM outage (analyzer, implementer) or a bug: not the candidate's failure
            log.exception("iteration %d failed", i)
            rec.update({"status": IterationStatus.ERROR, "reason": f"{type(exc).__name__}: {exc}"})
    rec["tokens"] = {r: u["prompt_tokens"] + u["completion_tokens"] for r, u in meter.as_dict().items()}
    rec["calls"] = {r: u["calls"] for r, u in meter.as_dict().items()}
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["best_so_far"] = run.archive.best().val_pass_rate
    append_jsonl(run.history_path, rec)
    append_jsonl(
        run.run_dir / "curve.jsonl",
        {
            k: rec.get(k)
            for k in (
                "iteration",
                "status",
                "candidate_val",
                "parent_val",
                "best_so_far",
                "admitted",
                "T",
                "p_value",
                "candidate_runs",
                "parent_runs",
                "admission_cost",
            )
        },
    )
    run.history.append(rec)
    run.tracker.log(
        {"candidate_val": rec.get("candidate_val"), "parent_val": rec.get("parent_val"),
         "best_so_far": rec["best_so_far"], "admitted": rec["admitted"], "tokens": sum(rec["tokens"].values())},
        step=i,
    )  # fmt: skip
    decided = decision_text(rec)
    log.info(
        "iteration %d: %s (candidate %s vs parent %s%s)%s",
        i, rec["status"], _rate(rec.get("candidate_val")), _rate(rec.get("parent_val")),
        f"; {decided}" if decided else "",
        f" - {rec['reason']}" if rec.get("reason") else "",
    )  # fmt: skip
    return rec


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


async def _iterate(run: MetaRun, i: int, rec: dict[str, Any]) -> dict[str, Any]:
    cfg = run.cfg.meta
    # 1. select a parent
    parent = select_parent(run.archive, strategy=cfg.selection, temperature=cfg.temperature, seed=cfg.seed, iteration=i)
    parent_dir = run.materialize(parent.commit)
    rec |= {
        "parent": parent.commit,
        "parent_harness_id": parent.harness_id,
        "parent_val": parent.val_pass_rate,
    }

    # 2. evaluate the parent on a training minibatch
    mb = run.minibatch(i)
    train = await run.evaluate(parent_dir, mb, "train")
    rec["train_docs"] = [d.doc_id for d in mb]
    rec["train_pass_rate"] = train.pass_rate
    if train.errors:
        return {
            "status": IterationStatus.ERROR,
            "reason": f"parent evaluation: {train.errors} document(s) failed: {train.error_reason}",
        }

    # 3. analyzer: root-cause analysis
    analysis = await analyze(
        run.client,
        harness_id=parent.harness_id,
        val_pass_rate=parent.val_pass_rate,
        trajectories=train.trajectories,
        history=run.history,
        max_chars=cfg.analyzer_chars,
        history_lines=cfg.history_lines,
    )
    rec["analysis"] = analysis

    # 4-5. implementer: edits of the parent's files, applied to a scratch copy (paths outside the
    # harness directory rejected), checked for duplicates, validated (prompt files + a dry run
    # in the sandbox); an edit that fails to apply or to validate goes back once with the error
    attempt = await propose_candidate(run, i, parent, parent_dir, analysis, rec)
    if isinstance(attempt, dict):
        return attempt
    scratch = run.run_dir / "scratch" / f"iter-{i:04d}"
    changed, cand_id = attempt.changed, attempt.harness_id

    # 6. admission on the validation documents (meta.admission): candidate replicates 0, 1, ...
    # against the parent's tallies (topped up with fresh replicates) or, strict, one fresh
    # parent replicate; the candidate's replicates are its decision, never its tallies
    rec["candidate_harness_id"] = cand_id
    decision, cand_evals, cand_tallies, cost = await admit(run, parent, parent_dir, scratch)
    cand0 = cand_evals[0]
    cost_tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in cost.values())
    rec |= {
        "candidate_val": decision.candidate_pass_rate, "parent_val": decision.parent_pass_rate,
        "admission": decision.to_json(), "T": decision.T, "p_value": decision.p_value,
        "candidate_runs": decision.candidate_runs, "parent_runs": decision.parent_runs,
        "admission_cost": {"document_evals": decision.evals, "tokens": cost_tokens,
                           "calls": sum(u["calls"] for u in cost.values())},
    }  # fmt: skip
    run.tallies.record_decision(
        cand_id.split("@")[1],
        {"iteration": i, "replicates": sorted(cand_evals), "tallies": cand_tallies.to_json(), **decision.to_json()},
    )
    run.tallies.set_first_replicate(cand_id.split("@")[1], max(cand_evals) + 1)
    run.tallies.save()

    # 7. commit the candidate either way (not on infrastructure errors); tag it if admitted
    admitted = decision.admitted
    if admitted:
        status, reason = IterationStatus.ADMITTED, None
    elif cand0.n_docs and cand0.crashed == cand0.n_docs:
        status, reason = IterationStatus.CRASHED, f"candidate crashed in the sandbox: {cand0.crash_reason}"
    elif decision.rule == "strict":  # the paper's rule, worded as before
        status, reason = (
            IterationStatus.REJECTED,
            (
                f"validation pass rate {decision.candidate_pass_rate:.3f} is not strictly greater than the parent's "
                f"{decision.parent_pass_rate:.3f}"
            ),
        )
    else:
        status, reason = IterationStatus.REJECTED, decision.reason
    summary = analysis.strip().splitlines()[0][:120] if analysis.strip() else "(empty analysis)"
    c_val, p_val = decision.candidate_pass_rate, decision.parent_pass_rate
    stat = f"T: {decision.T:.3f}\np_value: {decision.p_value}\nrule: {decision.rule}\n"
    message = (
        f"iter {i}: {status} (val {c_val:.3f} vs parent {p_val:.3f})\n\n"
        f"iteration: {i}\nparent: {parent.commit}\nval_pass_rate: {c_val:.4f}\n"
        f"parent_val_pass_rate: {p_val:.4f}\n{stat}status: {status}\nchanged: {', '.join(changed)}\nanalysis: {summary}\n"
    )
    commit = run.lineage.add_candidate(scratch, parent=parent.commit, iteration=i, message=message)
    rec |= {"candidate": commit, "diff_summary": run.lineage.diff_stat(parent.commit, commit), "admitted": admitted}
    if admitted:
        run.lineage.admit(commit, i)
        run.archive.add(ArchiveEntry(commit, cand_id, i, parent.commit, c_val))
    return {"status": status, "reason": reason}


async def admit(
    run: MetaRun, parent: ArchiveEntry, parent_dir: Path, cand_dir: Path
) -> tuple[AdmissionDecision, dict[int, EvalOutcome], Any, dict[str, Any]]:
    """Decide the candidate in ``cand_dir`` against ``parent`` with :func:`meta.admission.decide`.

    Returns:
        ``(decision, candidate evaluations by replicate, candidate tallies of the decision,
        usage of the decision's evaluations per role)``.

    Raises:
        InfrastructureError: an evaluation had infrastructure errors (the iteration is ``error``).
    """
    content = parent.harness_id.split("@")[1]
    cand_evals: dict[int, EvalOutcome] = {}

    async def evaluate_candidate(k: int) -> dict[str, bool]:
        outcome = await run.evaluate(cand_dir, run.val, "val", replicate=k)
        outcome.raise_on_errors(f"candidate replicate {k}")
        cand_evals[k] = outcome
        return outcome.outcomes()

    async def evaluate_parent(k: int) -> dict[str, bool]:
        return await run.parent_replicate(parent_dir, content, k)

    with track_usage(UsageMeter()) as meter:
        decision, cand_tallies, _ = await decide(
            run.cfg.meta.admission_config(), docs=[d.doc_id for d in run.val], parent=run.tallies.tallies(content),
            evaluate_candidate=evaluate_candidate, evaluate_parent=evaluate_parent,
        )  # fmt: skip
    return decision, cand_evals, cand_tallies, meter.as_dict()


# -- the run ---------------------------------------------------------------------------------------
async def prepare(cfg: EvolveConfig, run_dir: Path, client: LLMClient, *, executor: Executor = LOCAL) -> MetaRun:
    """Splits, evaluator identity, lineage root, archive (evaluating the root on validation if
    new), history.

    Raises:
        ConfigError: the run was made under a different evaluator config (the message names
            the differing keys; ``meta.allow_evaluator_change=true`` overrides), or the starting
            harness could not be evaluated.
    """
    splits = make_splits(cfg, run_dir)
    check_evaluator(cfg, run_dir, splits)
    lineage = Lineage(run_dir / "lineage")
    archive = Archive(run_dir / "archive.json")
    run = MetaRun(
        cfg,
        run_dir,
        client,
        lineage,
        archive,
        load_split(cfg, splits["train"]),
        load_split(cfg, splits["val"]),
        executor=executor,
    )
    run.history = load_history(run.history_path)
    done = {h["iteration"] for h in run.history if h.get("status") != IterationStatus.ERROR}
    for it in lineage.iteration_refs():
        if it not in done:  # half-made: discard and redo
            lineage.discard_iteration(it)
            run.archive.entries = [e for e in run.archive.entries if e.iteration != it]
            run.archive.save()
    if cfg.meta.fitness == "student_gain":  # the evaluation set: disjoint, split, recorded
        student.check_eval_set(run)
    if lineage.root is None:
        start = resolve_harness_dir(cfg.meta.start_harness)
        src = run_dir / "scratch" / "root"
        shutil.rmtree(src, ignore_errors=True)
        copy_harness(start, src, **run.harness_caps)
        lineage.init_root(src, message=f"root: starting harness {harness_id(start)}\n\nsource: {start}\n")
    if not archive.entries:
        root = lineage.root
        assert root is not None
        root_dir = run.materialize(root)
        if cfg.meta.fitness == "student_gain":  # the root's student public score (meta/student.py)
            score, fields = await student.evaluate_root(run, root_dir)
            archive.add(ArchiveEntry(root, harness_id(root_dir), 0, None, score))
            append_jsonl(run_dir / "curve.jsonl", {"iteration": 0, "status": IterationStatus.ROOT, "candidate_val": score,
                         "parent_val": None, "best_so_far": score, "admitted": True, **fields})  # fmt: skip
            return run
        floor = await measure_noise_floor(run, root_dir)
        archive.add(ArchiveEntry(root, harness_id(root_dir), 0, None, floor["mean"]))
        append_jsonl(
            run_dir / "curve.jsonl",
            {"iteration": 0, "status": IterationStatus.ROOT, "candidate_val": archive.entries[0].val_pass_rate,
             "parent_val": None, "best_so_far": archive.entries[0].val_pass_rate, "admitted": True,
             "noise_floor": {k: floor[k] for k in ("n_replicates", "mean", "std", "min", "max", "doc_spread")}},
        )  # fmt: skip
    return run


async def measure_noise_floor(run: MetaRun, root_dir: Path) -> dict[str, Any]:
    """Evaluate the starting harness ``meta.noise_reps`` times (replicates 0..n-1) on the
    validation documents; its pass rate's mean, std, range and per-document spread
    (:func:`meta.admission.noise_floor`, plus each document's pass fraction) go to
    ``noise_floor.json``, and the replicates seed the root's tallies.

    Raises:
        ConfigError: the starting harness could not be evaluated (infrastructure errors).
    """
    content = harness_id(root_dir).split("@")[1]
    reps = range(run.cfg.meta.noise_reps)
    outcomes = await asyncio.gather(*(run.evaluate(root_dir, run.val, "val", replicate=r) for r in reps))
    for outcome in outcomes:
        if outcome.errors:
            raise ConfigError(
                f"the starting harness could not be evaluated: {outcome.errors} document(s) failed on "
                f"infrastructure: {outcome.error_reason}"
            )
    for r, outcome in zip(reps, outcomes, strict=True):
        run.tallies.add_replicate(content, r, outcome.outcomes())
    run.tallies.save()
    floor = noise_floor([o.outcomes() for o in outcomes])
    tallies = run.tallies.tallies(content)
    floor |= {
        "harness_id": harness_id(root_dir), "replicates": list(reps),
        "pass_rates": [o.pass_rate for o in outcomes],
        "per_doc": {d: tallies[d].fraction for d in tallies.docs()},
    }  # fmt: skip
    atomic_write_text(run.run_dir / "noise_floor.json", json.dumps(floor, indent=1) + "\n")
    return floor


def load_history(path: Path) -> list[dict[str, Any]]:
    """The ledger ``history.jsonl``: a torn line (a kill during a write) is skipped, as
    :func:`inner.io.read_jsonl` does.

    Raises:
        ConfigError: a line parses but is not an iteration record (an object with an integer
            ``iteration`` and a ``status``): the file is corrupt; it is not touched.
    """
    history = read_jsonl(path)
    for n, h in enumerate(history, 1):
        if not (isinstance(h, dict) and isinstance(h.get("iteration"), int) and isinstance(h.get("status"), str)):
            raise ConfigError(
                f"{path} is corrupt: record {n} is not an iteration record ({str(h)[:80]!r}); it was left as it "
                "is. Remove or repair that line (a removed iteration is redone) or choose a new hydra.run.dir"
            )
    return history


def check_run_state(run_dir: Path) -> None:
    """Read the run's state files once before the backend starts, so that a torn or corrupt
    ``splits.json``, ``archive.json`` or ``history.jsonl`` stops the run with one message
    (nothing is rewritten).

    Raises:
        ConfigError: the first unreadable file, named.
    """
    if (run_dir / "splits.json").exists():
        read_splits(run_dir / "splits.json")
    Archive(run_dir / "archive.json")
    load_history(run_dir / "history.jsonl")


async def check_start_harness(cfg: EvolveConfig, run_dir: Path) -> None:
    """Before the backend starts: a starting harness that does not import or defines no
    ``async def run(agent)`` stops the run (it would become the lineage root and crash every
    document). Skipped once the lineage has its root (the harness is then the committed one).

    Raises:
        HarnessError: the import error, the missing ``run``, or no file matching ``meta.editable``.
    """
    from inner.engine.run import check_harness_loads

    if (run_dir / "lineage" / ".git").is_dir() and Lineage(run_dir / "lineage").root is not None:
        return
    start = resolve_harness_dir(cfg.meta.start_harness)
    await check_harness_loads(start, cfg.generate_config(), name=f"meta.start_harness={cfg.meta.start_harness}")
    inner = cfg.inner
    entries = scan_harness(start, max_files=inner.harness_max_files, max_bytes=inner.harness_max_mb << 20)
    members = [e.rel for e in entries if e.kind == "file"]
    if not any(is_editable(rel, cfg.meta.editable) for rel in members):
        raise HarnessError(
            f"meta.editable={list(cfg.meta.editable)} matches none of the starting harness's files "
            f"({', '.join(sorted(members)[:10])}): the implementer could edit nothing"
        )


def check_evaluator(cfg: EvolveConfig, run_dir: Path, splits: dict[str, list[str]]) -> None:
    """Record the run's evaluator config and splits in ``evaluator.json``; on resume, refuse a
    different one, naming the differing keys (``meta.allow_evaluator_change=true`` logs them
    and goes on; evaluations stay keyed by their own evaluator hash, so none is reused across).

    Raises:
        ConfigError: the recorded evaluator config or splits differ.
    """
    path = run_dir / "evaluator.json"
    current = {"evaluator": evaluator_identity(cfg.generate_config()), "splits": splits}
    recorded_evals = any((run_dir / name).exists() for name in ("history.jsonl", "archive.json", "curve.jsonl")) or any(
        (run_dir / "evals").glob("*/*")
    )
    if not path.exists() and recorded_evals and not cfg.meta.allow_evaluator_change:
        raise ConfigError(
            f"{path} is missing but {run_dir} holds recorded evaluations: the evaluator they were made under "
            "cannot be checked. Restore evaluator.json, choose a new hydra.run.dir, or set "
            "meta.allow_evaluator_change=true (earlier evaluations are then not reused)"
        )
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path} is unreadable ({type(exc).__name__}: {exc}); restore it or choose a new hydra.run.dir"
            ) from exc
        diff = identity_diff(recorded, current)
        frozen = [
            "inner/evaluator/" + k.removeprefix("evaluator.frozen.") for k in diff if k.startswith("evaluator.frozen.")
        ]
        if frozen and not cfg.meta.allow_evaluator_change:
            raise ConfigError(
                f"{run_dir} was evaluated under different frozen evaluator code: {', '.join(frozen)} changed since. "
                "Restore the file, choose a new hydra.run.dir, or set meta.allow_evaluator_change=true "
                "(earlier evaluations are then not reused)"
            )
        if diff and not cfg.meta.allow_evaluator_change:
            raise ConfigError(
                f"{run_dir} was made under a different evaluator config; differing keys: {', '.join(diff[:12])}"
                f"{' ...' if len(diff) > 12 else ''}. Resume with the same settings, choose a new hydra.run.dir, "
                "or set meta.allow_evaluator_change=true (earlier evaluations are then not reused)"
            )
        if diff:
            log.warning("evaluator config changed (meta.allow_evaluator_change=true): %s", ", ".join(diff))
    atomic_write_text(path, json.dumps(current, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` if it is missing."""
    return json.loads(path.read_text()) if path.exists() else None


def budget_reached(run: MetaRun, *, t0: float, launched: int) -> str | None:
    """Which budget stops the run, or ``None``: ``max_iterations``, ``max_tokens``, ``max_wall_s``."""
    m = run.cfg.meta
    if launched >= m.max_iterations:
        return f"max_iterations={m.max_iterations} reached"
    if m.max_tokens is not None:
        used = sum(sum(h.get("tokens", {}).values()) for h in run.history)
        if used >= m.max_tokens:
            return f"max_tokens={m.max_tokens} reached ({used} tokens)"
    if m.max_wall_s is not None and time.monotonic() - t0 >= m.max_wall_s:
        return f"max_wall_s={m.max_wall_s:g} reached"
    return None


async def evolve(
    cfg: EvolveConfig,
    run_dir: Path,
    client: LLMClient,
    *,
    tracker: Tracker | None = None,
    executor: Executor = LOCAL,
) -> dict[str, Any]:
    """Run iterations, ``meta.in_flight`` at a time, until a budget is reached; the evaluations'
    documents run on ``executor`` (this process by default).

    Returns:
        A summary: iterations, admitted, baseline and best validation pass rates, stop reason.
    """
    t0 = time.monotonic()
    run = await prepare(cfg, run_dir, client, executor=executor)
    run.tracker = tracker or NullTracker()
    done = {h["iteration"] for h in run.history if h.get("status") != IterationStatus.ERROR}
    todo = (i for i in range(1, 1 << 30) if i not in done)
    running: set[asyncio.Task[dict[str, Any]]] = set()
    stop: str | None = None
    consecutive_errors = 0
    while True:
        launched = len(done) + len(running)
        stop = stop or budget_reached(run, t0=t0, launched=launched)
        while stop is None and len(running) < cfg.meta.in_flight:
            running.add(asyncio.create_task(run_iteration(run, next(todo))))
            stop = budget_reached(run, t0=t0, launched=len(done) + len(running))
        if not running:
            break
        timeout = None
        if cfg.meta.max_wall_s is not None:
            timeout = max(0.0, cfg.meta.max_wall_s - (time.monotonic() - t0))
        finished, running = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            line = task.result()
            done.add(line["iteration"])
            consecutive_errors = consecutive_errors + 1 if line["status"] == IterationStatus.ERROR else 0
            if consecutive_errors >= cfg.meta.max_consecutive_errors and stop is None:
                stop = (
                    f"circuit breaker: {consecutive_errors} consecutive iterations failed on infrastructure "
                    f"(last: {line.get('reason')}); fix the endpoint and rerun to redo them"
                )
        if not finished and timeout is not None:  # wall clock: cancel; redone on resume
            stop = f"max_wall_s={cfg.meta.max_wall_s:g} reached"
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            running = set()
    from meta.confirm import confirm

    if cfg.meta.fitness == "student_gain" and not (stop or "").startswith("circuit breaker"):
        confirmation, note = await student.replay_private(run), None  # the private split, read once
    elif (stop or "").startswith("circuit breaker"):
        confirmation, note = None, "not confirmed on the sealed test split: the run stopped on infrastructure errors"
    else:
        confirmation, note = await confirm(run)
    summary = {
        "stop_reason": stop,
        "iterations": len(run.history),
        "admitted": sum(h["status"] == IterationStatus.ADMITTED for h in run.history),
        "statuses": {s: sum(h["status"] == s for h in run.history) for s in STATUSES},
        "baseline_val_pass_rate": run.archive.entries[0].val_pass_rate,
        "best_val_pass_rate": run.archive.best().val_pass_rate,
        "best_commit": run.archive.best().commit,
        "best_harness_id": run.archive.best().harness_id,
        "admission": cfg.meta.admission,
        "fitness": cfg.meta.fitness,
        "noise_floor": _read_json(run_dir / "noise_floor.json"),
        "confirmation": confirmation,
        **({"confirmation_note": note} if note else {}),
        "this_invocation": client.usage.as_dict(),
        "wall_s": round(time.monotonic() - t0, 2),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    run.tracker.summary(summary)
    log.info("stopped: %s", stop)
    return summary


async def run_evolve(cfg: EvolveConfig, run_dir: Path, *, base_urls: dict[str, str] | None = None) -> dict[str, Any]:
    """``autodata-evolve``: start the backend (unless ``base_urls`` is given), share one cached
    client across all iterations, evolve, and return the summary (also ``summary.json``)."""
    import contextlib

    from inner.entrypoint import check_open_files
    from inner.llm.backends import start_backend
    from inner.llm.cache import ResponseCache
    from inner.llm.probe import probe_endpoints

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(run_dir)  # what a killed run left half-written
    check_run_state(run_dir)
    check_open_files(  # candidate and parent evaluated at once in each iteration in flight
        documents=cfg.meta.in_flight * 2 * cfg.inner.max_concurrent_documents,
        connections=cfg.llm.max_connections(),
        what=f"meta.in_flight={cfg.meta.in_flight} x 2 evaluations x inner.max_concurrent_documents="
        f"{cfg.inner.max_concurrent_documents}",
    )
    await check_start_harness(cfg, run_dir)
    cache = ResponseCache(Path(cfg.llm.cache_dir) if cfg.llm.cache_dir else run_dir / "llm_cache")
    backend: Any = (
        contextlib.nullcontext(base_urls) if base_urls is not None else start_backend(cfg.llm, log_dir=run_dir)
    )
    with backend as urls:
        await asyncio.to_thread(probe_endpoints, cfg.llm, urls)  # one clear error up front
        client = LLMClient(cfg.llm, base_urls=urls, cache=cache, call_log=run_dir / "calls.jsonl")
        tracker = build_tracker(cfg.logger, run_dir=run_dir, config=asdict(cfg), job="evolve")
        executor = open_executor(
            cfg.executor, llm=cfg.llm, base_urls=urls, cache_root=cache.root, log_dir=run_dir,
            max_concurrent_documents=cfg.inner.max_concurrent_documents,
        )  # fmt: skip
        try:
            async with executor as ex:
                with throughput_gc():
                    return await evolve(cfg, run_dir, client, tracker=tracker, executor=ex)
        finally:
            tracker.finish()
            await client.aclose()
