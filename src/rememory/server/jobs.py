"""Training and verify jobs: episodes are validated when they arrive and trained on one background thread.

One worker trains one job at a time, so concurrent requests queue instead of competing for
the CPU. A job moves ``queued`` → ``running`` → ``succeeded`` or ``failed``; its progress is
the engine-neutral :class:`~rememory.records.EncodeProgress`. A verify job checks a namespace's
memories on the same thread, reporting episodes checked as its progress. Jobs live in memory: a
restart forgets them (the episodes they stored stay stored).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, RememoryError, StoreBusyError
from ..memory import Memory
from ..records import EncodeProgress, Episode, VerifyReport
from .errors import TooManyJobsError, classify

logger = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed"]
JobKind = Literal["train", "verify"]


@dataclass
class Job:
    """One request's episodes, trained in the background. Read it through :meth:`to_dict`."""

    id: str
    namespace: str
    episodes: list[Episode] = field(repr=False)
    status: JobStatus = "queued"
    progress: EncodeProgress | None = None
    error: dict[str, str] | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    kind: JobKind = "train"
    checked: tuple[int, int] = (0, 0)  # a verify job's (episodes checked, episodes to check)
    report: VerifyReport | None = None  # a verify job's outcome

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.episodes]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "verify":
            return self._verify_dict()
        total_bytes = sum(len(e.text.encode("utf-8")) for e in self.episodes)
        p = self.progress
        finished = self.status == "succeeded"
        return {
            "id": self.id,
            "status": self.status,
            "ids": self.ids,
            "progress": {
                # Episodes already stored are skipped by the trainer, so report the job's own totals.
                "episodes_done": len(self.episodes) if finished else (p.done if p else 0),
                "episodes_total": len(self.episodes),
                "bytes_done": total_bytes if finished else (p.bytes_done if p else 0),
                "bytes_total": total_bytes,
                "elapsed_s": p.elapsed_s if p else 0.0,
                "stage": p.stage if p else "encode",
            },
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "kind": self.kind,
            "verify": None,
        }

    def _verify_dict(self) -> dict[str, Any]:
        done, total = self.checked
        r = self.report
        return {
            "id": self.id,
            "status": self.status,
            "ids": [],
            "progress": {"episodes_done": done, "episodes_total": total, "bytes_done": 0, "bytes_total": 0,
                         "elapsed_s": (self.finished_at or time.time()) - self.created_at, "stage": "verify"},
            "error": self.error,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "kind": self.kind,
            "verify": None if r is None else {"checked": r.checked, "failed": r.failed, "ok": r.ok},
        }  # fmt: skip


class JobRunner:
    """Queues training jobs for one :class:`Memory` and runs them on a background thread.

    Finished jobs are kept (newest ``keep`` of them) so that clients can read their outcome.

    >>> from rememory.episodes import validate_many
    >>> runner = JobRunner(memory)
    >>> episodes = validate_many([{"keywords": "tea", "text": "Green tea at noon."}], namespace="alice",
    ...                          max_text_bytes=memory.max_text_bytes)
    >>> job = runner.submit(episodes, namespace="alice")
    >>> job.done.wait(120) and runner.get(job.id, namespace="alice").status
    'succeeded'
    >>> runner.close()
    """

    def __init__(self, memory: Memory, *, keep: int = 1000, max_queued: int = 1000, max_per_namespace: int = 8):
        if max_per_namespace < 1:
            raise ConfigError(f"max_per_namespace must be at least 1, got {max_per_namespace}.")
        self._memory = memory
        self._keep = keep
        self._max_queued = max_queued
        self._max_per_namespace = max_per_namespace
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, episodes: list[Episode], *, namespace: str) -> Job:
        """Queue validated ``episodes`` for training in ``namespace``; returns the queued job."""
        return self._enqueue(Job(id="job-" + secrets.token_hex(12), namespace=namespace, episodes=list(episodes)))

    def submit_verify(self, *, namespace: str) -> Job:
        """Queue a check of every memory of ``namespace`` (:meth:`Memory.verify`); returns the queued job."""
        return self._enqueue(Job(id="job-" + secrets.token_hex(12), namespace=namespace, episodes=[], kind="verify"))

    def _enqueue(self, job: Job) -> Job:
        namespace = job.namespace
        with self._lock:
            if self._closed:
                raise StoreBusyError("The server is shutting down and takes no more training jobs; retry shortly.")
            pending = sum(1 for j in self._jobs.values() if j.namespace == namespace and not j.done.is_set())
            if pending >= self._max_per_namespace:
                raise TooManyJobsError(
                    f"Namespace {namespace!r} already has {pending} training jobs queued or running, the most this "
                    "server takes; wait for one to finish (GET /v1/jobs/ID) before adding more, or send more "
                    "episodes per request."
                )
            if self._queue.qsize() >= self._max_queued:
                raise StoreBusyError(
                    f"{self._max_queued} training jobs are already waiting; retry when some have finished."
                )
            self._jobs[job.id] = job
            self._evict()
            if self._thread is None:  # started on first use: an app that never trains has no thread
                self._thread = threading.Thread(target=self._work, name="rememory-training", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def get(self, job_id: str, *, namespace: str) -> Job | None:
        """The job with this id, or ``None`` if there is none in ``namespace`` (tenant isolation)."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.namespace == namespace else None

    def _evict(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.done.is_set()]
        for jid in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[jid]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        job.status = "running"

        def on_progress(ev: EncodeProgress) -> None:
            job.progress = ev

        def on_checked(done: int, total: int) -> None:
            job.checked = (done, total)

        try:
            if job.kind == "verify":
                job.checked = (0, self._memory.count(job.namespace))
                job.report = self._memory.verify(on_checked, namespace=job.namespace)
            else:
                self._memory.add_many(job.episodes, namespace=job.namespace, progress=on_progress)
        except RememoryError as exc:
            _, kind = classify(exc)
            self._finish(job, "failed", {"type": kind, "message": str(exc)})
        except Exception as exc:  # the worker must survive any job's failure and report it
            logger.exception("Training job %s failed unexpectedly", job.id)
            self._finish(job, "failed", {"type": "internal_error", "message": f"Training failed unexpectedly: {exc}"})
        else:
            self._finish(job, "succeeded", None)

    def _finish(self, job: Job, status: JobStatus, error: dict[str, str] | None) -> None:
        job.error = error
        job.finished_at = time.time()
        job.status = status
        job.done.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, fail the queued ones, and wait for the running one to commit."""
        with self._lock:
            self._closed = True
            thread = self._thread
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                why = "The server shut down before training this job; resubmit it."
                self._finish(job, "failed", {"type": "unavailable", "message": why})
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
