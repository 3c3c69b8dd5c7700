"""Long work (deploys, optimizations) as jobs: a thread each, state a client can poll.

```python
job = jobs.submit("deploy", "deploy intent-cls 3", work)  # work(job) -> JobResult; job.step(...)
jobs.get(job.id).info()   # JobInfo: id, kind, state, progress, step, log, result, error
```
States: ``pending`` -> ``running`` -> ``succeeded`` | ``failed``. Jobs live in memory for the
control plane's lifetime (a restarted control plane reconciles deployments from the store, not
from jobs). ``JobRunner(on_finish=...)`` is called with each job once it has ended (metrics).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

from .errors import ControlPlaneError, NotFound
from .schema import JobError, JobInfo, JobResult, JobState

__all__ = ["STATES", "Job", "JobRunner"]

_LOG_LINES = 200
STATES: Final[tuple[JobState, ...]] = ("pending", "running", "succeeded", "failed")

log = logging.getLogger(__name__)


class Job:
    """One unit of long work and what it reported."""

    def __init__(self, kind: str, title: str):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.title = title
        self.state: JobState = "pending"
        self.progress = 0.0
        self.current = ""
        self.log: deque[str] = deque(maxlen=_LOG_LINES)
        self.result: JobResult | None = None
        self.error: JobError | None = None
        self.created = time.time()
        self.finished: float | None = None
        self.done = threading.Event()

    def step(self, name: str, progress: float | None = None) -> None:
        """Report the current step (and progress in 0..1)."""
        self.current = name
        if progress is not None:
            self.progress = max(self.progress, min(1.0, progress))
        self.say(name)

    def say(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def info(self) -> JobInfo:
        """The job as ``GET /api/v1/jobs/{id}`` answers it."""
        return JobInfo(
            id=self.id,
            kind=self.kind,
            title=self.title,
            state=self.state,
            progress=round(self.progress, 3),
            step=self.current,
            log=list(self.log),
            result=self.result,
            error=self.error,
            created=self.created,
            finished=self.finished,
        )


class JobRunner:
    """Runs jobs on their own threads and keeps them for polling.

    Args:
        on_finish: called on the job's thread once a job has succeeded or failed (``finished``
            set), before its waiters wake; what it raises is logged and changes nothing.
    """

    def __init__(self, on_finish: Callable[[Job], None] | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._on_finish = on_finish

    def submit(self, kind: str, title: str, work: Callable[[Job], JobResult]) -> Job:
        job = Job(kind, title)
        with self._lock:
            self._jobs[job.id] = job

        def run() -> None:
            job.state = "running"
            try:
                job.result = work(job)
                job.progress = 1.0
                job.state = "succeeded"
                job.say("done")
            except ControlPlaneError as exc:
                job.error = JobError(error=str(exc), detail=exc.detail)
                job.state = "failed"
                job.say(f"failed: {exc}")
            except Exception as exc:  # a job's failure is its result, never a crashed thread
                job.error = JobError(error=f"{type(exc).__name__}: {exc}")
                job.state = "failed"
                job.say(f"failed: {type(exc).__name__}: {exc}")
            finally:
                job.finished = time.time()
                if self._on_finish is not None:
                    try:
                        self._on_finish(job)
                    except Exception:  # an observer's bug must not hang the job's waiters
                        log.exception("on_finish failed for job %s", job.id)
                job.done.set()

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        """Raises: NotFound: no such job."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", {"job": job_id})
        return job

    def counts(self) -> Counter[tuple[str, str]]:
        """How many jobs there are by ``(kind, state)``."""
        with self._lock:
            jobs = list(self._jobs.values())
        return Counter((job.kind, job.state) for job in jobs)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every job (shutdown, tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in list(self._jobs.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            job.done.wait(left)
