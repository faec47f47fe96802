"""Jobs: one bounded queue, workers that call Easel.generate, records in the gallery database.

Why a queue and not "call generate in the request handler": pipelines, schedulers and fast
tokenizers are not thread-safe, and a GPU runs one generation well, not several badly. So
every door (native, A1111, OpenAI) submits a job here; `server_workers` threads (one per
device by default) take jobs in order and call Easel.generate, whose own lock would
serialise them anyway. Waiting for a result is an asyncio future completed from the worker,
so a slow job holds no server thread.

Records live in a `jobs` table of <home>/gallery/gallery.db (the gallery's database, so a job
and the images it made are one backup). A record is written when a job is submitted, starts
and ends; progress is kept in memory only. After a restart, jobs that were running are marked
failed ("interrupted by restart") and queued ones are queued again, oldest first: nothing is
lost silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from easel.errors import Cancelled, EaselError, GenerationFailed, InvalidRequest
from easel.request import GenerationRequest
from easel.server.errors import JobConflict, JobNotFound, QueueFull, public_message
from easel.storage.database import reading, transaction

if TYPE_CHECKING:
    from easel.engine import Easel, ProgressCallback
    from easel.limits import Limits
    from easel.result import GenerationResult, Progress
    from easel.storage.gallery import Gallery

log = logging.getLogger("easel.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
INTERRUPTED = "interrupted by restart"


@dataclass
class Job:
    """One generation job. Fields change only under JobQueue's lock; `version` counts changes
    so progress streams can tell something happened without comparing everything."""

    id: str
    request: GenerationRequest
    source: str  # which door submitted it: native | a1111 | openai
    created_at: str
    status: str = QUEUED
    step: int = 0
    total: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    error: dict[str, Any] | None = None  # {"type", "message", "field"}
    # [{"id", "seed", "nsfw", "parameters"}]: gallery ids and each image's A1111 parameters text
    images: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # GenerationResult.summary() (+ model_hashes), no pixels
    worker: str | None = None  # who ran it: None in one process, the Ray Serve replica when scaled out
    version: int = 0
    # the latest live preview (PNG bytes of the first image, at step `preview_step`); memory only,
    # dropped when the job ends
    preview: bytes | None = field(default=None, repr=False)
    preview_step: int = 0
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def exception(self) -> EaselError | None:
        """The error of a failed or cancelled job as the EaselError it was, for the doors to map."""
        return None if self.error is None else error_from(self.error)

    def describe(self) -> dict[str, Any]:
        """The public record (no pixels, no uploaded image data, no server paths)."""
        return {
            "id": self.id,
            "status": self.status,
            "source": self.source,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {"step": self.step, "total": self.total},
            "request": public_request(self.request),
            "error": self.error,
            "images": [{**image, "url": f"/api/v1/images/{image['id']}"} for image in self.images],
            "result": self.summary,
            "worker": self.worker,
        }


def error_from(record: dict[str, Any]) -> EaselError:
    """An error record ({"type", "message", "field"}) as the EaselError it was."""
    kinds: dict[str, type[EaselError]] = {
        cls.__name__: cls for cls in (Cancelled, GenerationFailed, *EaselError.__subclasses__())
    }
    kind = kinds.get(record.get("type", ""), GenerationFailed)
    if kind is InvalidRequest:
        return InvalidRequest(record["message"], field=record.get("field"))
    error = kind(record["message"])
    if record.get("field") is not None:  # an UnsupportedFeature may name its field too
        error.field = record["field"]  # type: ignore[attr-defined]
    return error


def public_request(request: GenerationRequest | dict[str, Any]) -> dict[str, Any]:
    """A request as JSON for responses: an uploaded init image or mask is summarised, not
    echoed, and a local path (the gallery's copy of an input) is reduced to its file name."""
    fields = request.model_dump(mode="json") if isinstance(request, GenerationRequest) else dict(request)
    fields["init_image"] = _public_image(fields.get("init_image"))
    if fields.get("mask_image") is not None:
        fields["mask_image"] = _public_image(fields["mask_image"])
    if fields.get("reference_images"):
        fields["reference_images"] = [_public_image(image) for image in fields["reference_images"]]
    if fields.get("controls"):
        fields["controls"] = [
            {**unit, "image": _public_image(unit.get("image"))} for unit in fields["controls"]
        ]
    return fields


def _public_image(image: Any) -> Any:
    if not isinstance(image, str) or image.startswith(("http://", "https://")):
        return image
    if image.startswith("data:"):
        return f"(uploaded image, {len(image)} characters of data URL)"
    return Path(image).name


class JobStore:
    """The `jobs` table in the gallery's SQLite file; one connection per call (thread-safe)."""

    COLUMNS = (
        "id", "created_at", "started_at", "finished_at", "status", "source", "request_json",
        "error_json", "images_json", "summary_json", "worker",
    )  # fmt: skip

    def __init__(self, database: Path) -> None:
        self.database = database
        with transaction(self.database) as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, "
                "started_at TEXT, finished_at TEXT, status TEXT NOT NULL, source TEXT, "
                "request_json TEXT NOT NULL, error_json TEXT, images_json TEXT, summary_json TEXT)"
            )
            connection.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at)")
            columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
            if "worker" not in columns:  # a gallery made before scale-out: add the column
                connection.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")

    def save(self, job: Job) -> None:
        """Insert or replace the record. A finished job keeps its public request only (an
        uploaded image is not kept twice: the gallery stores the input with the images)."""
        request = public_request(job.request) if job.finished else job.request.model_dump(mode="json")
        row = (
            job.id, job.created_at, job.started_at, job.finished_at, job.status, job.source,
            json.dumps(request, ensure_ascii=False), json.dumps(job.error), json.dumps(job.images),
            json.dumps(job.summary, ensure_ascii=False), job.worker,
        )  # fmt: skip
        with transaction(self.database) as connection:
            connection.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(self.COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in self.COLUMNS)})",
                row,
            )

    def load(self, job_id: str) -> Job | None:
        with reading(self.database) as connection:
            row = connection.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else self._job(dict(zip(self.COLUMNS, row, strict=True)))

    def recent(self, limit: int) -> list[Job]:
        with reading(self.database) as connection:
            rows = connection.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._job(dict(zip(self.COLUMNS, row, strict=True))) for row in rows]

    def recover(self) -> list[Job]:
        """After a restart: running jobs failed, queued jobs returned (oldest first) to run."""
        now = _now()
        error = json.dumps({"type": "GenerationFailed", "message": INTERRUPTED, "field": None})
        with transaction(self.database) as connection:
            connection.execute(
                "UPDATE jobs SET status = ?, error_json = ?, finished_at = ? WHERE status = ?",
                (FAILED, error, now, RUNNING),
            )
            rows = connection.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM jobs WHERE status = ? ORDER BY created_at",
                (QUEUED,),
            ).fetchall()
        jobs = []
        for row in rows:
            record = dict(zip(self.COLUMNS, row, strict=True))
            try:
                jobs.append(self._job(record, strict=True))
            except EaselError as problem:  # e.g. a field an older version accepted
                failed = self._job(record)
                failed.status, failed.finished_at = FAILED, now
                failed.error = {
                    "type": "InvalidRequest",
                    "message": f"not resumable: {problem}",
                    "field": None,
                }
                self.save(failed)
        return jobs

    def _job(self, row: dict[str, Any], *, strict: bool = False) -> Job:
        fields = json.loads(row["request_json"])
        if strict:
            request = GenerationRequest.from_fields(fields)
        else:  # a finished record's public request need not validate (summarised init image)
            request = GenerationRequest.model_construct(**fields)
        job = Job(
            id=row["id"], request=request, source=row["source"] or "native", created_at=row["created_at"]
        )
        job.status, job.started_at, job.finished_at = row["status"], row["started_at"], row["finished_at"]
        job.error = json.loads(row["error_json"] or "null")
        job.images = json.loads(row["images_json"] or "[]")
        job.summary = json.loads(row["summary_json"] or "null")
        job.worker = row["worker"]
        if job.finished:
            job.done.set()
        return job


class Runner(Protocol):
    """What runs one job's generation for the queue: the server's own Easel by default, or
    workers elsewhere (server/ray_serve.py). It may name who ran it in `job.worker`."""

    def __call__(
        self, job: Job, *, on_progress: ProgressCallback, limits: Limits | None
    ) -> GenerationResult: ...


class JobQueue:
    """The bounded queue and its workers; the only caller of Easel.generate in the server."""

    def __init__(
        self,
        engine: Easel,
        gallery: Gallery,
        store: JobStore,
        *,
        size: int,
        workers: int = 1,
        limits: Limits | None = None,
        runner: Runner | None = None,
        max_batch: int = 1,
        batch_window_ms: int = 50,
    ) -> None:
        if max_batch > 1 and runner is not None:
            raise _batching_is_local(max_batch)
        if max_batch < 1 or batch_window_ms < 0:
            raise InvalidRequest(
                f"invalid max_batch={max_batch} / batch_window_ms={batch_window_ms}: need >= 1 / >= 0",
                field="max_batch" if max_batch < 1 else "batch_window_ms",
                value=max_batch if max_batch < 1 else batch_window_ms,
            )
        # batching (easel.batching): up to max_batch compatible jobs gathered within the window
        self.max_batch, self.batch_window = max_batch, batch_window_ms / 1000
        self._keys: dict[str, str | None] = {}  # job id -> its batch key, computed once
        self.engine, self.gallery, self.store = engine, gallery, store
        self.runner: Runner = runner or self._run_here
        self.limits = limits  # checked by the engine on the concrete request (defaults filled in)
        self.preview_every = 0  # live previews every N steps (0: off); create_app sets the server's
        self.size, self.workers = size, max(1, workers)
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # jobs of this process (finished ones too, bounded)
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._durations: deque[float] = deque(maxlen=20)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Recover the records of an earlier run, then start the workers."""
        if self.max_batch > 1 and self.runner != self._run_here:  # a runner set after construction
            raise _batching_is_local(self.max_batch)
        with self._lock:
            for job in self.store.recover():
                self._jobs[job.id] = job
                self._waiting.append(job)
            self._stopping = False
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"easel-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop taking jobs. A job still running keeps its "running" record, so the next
        start reports it as interrupted; queued jobs stay queued and run after a restart."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # -- doors ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest, source: str) -> Job:
        """Queue a job and return it at once; QueueFull when `size` jobs are waiting."""
        with self._lock:
            if len(self._waiting) >= self.size:
                raise QueueFull(len(self._waiting), self.retry_after())
            job = Job(id=uuid.uuid4().hex, request=request, source=source, created_at=_now())
            self.store.save(job)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._lock.notify()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            job = self.store.load(job_id) if _is_id(job_id) else None
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return job

    def recent(self, limit: int = 50) -> list[Job]:
        """Newest first; jobs of this process as they are now, older ones from the records."""
        with self._lock:
            live = dict(self._jobs)
        return [live.get(job.id, job) for job in self.store.recent(limit)]

    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled now. Running: stops at the next denoising step. Finished: JobConflict."""
        job = self.get(job_id)
        with self._lock:
            if job.finished:
                raise JobConflict(f"job {job_id} already {job.status}")
            job.cancel.set()
            if job.status == QUEUED:
                if job in self._waiting:
                    self._waiting.remove(job)
                self._finish(job, CANCELLED, error=Cancelled("cancelled while queued"))
        return job

    def interrupt(self) -> int:
        """Cancel the running jobs (A1111's /interrupt); returns how many."""
        with self._lock:
            running = [job for job in self._jobs.values() if job.status == RUNNING]
            for job in running:
                job.cancel.set()
        return len(running)

    def state(self) -> dict[str, Any]:
        """What is happening now: the running job (if any) and how many wait."""
        with self._lock:
            running = next((job for job in self._jobs.values() if job.status == RUNNING), None)
            return {"running": running, "queued": len(self._waiting)}

    def position(self, job: Job) -> int | None:
        """1 when the job runs next, 2 after that...; None once it is not waiting."""
        with self._lock:
            return next((place for place, waiting in enumerate(self._waiting, 1) if waiting is job), None)

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free (an estimate from recent jobs)."""
        average = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, math.ceil(average / self.workers))

    async def wait(self, job: Job) -> Job:
        """Wait (without holding a thread) until the job is finished."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        with self._lock:
            if job.finished:
                return job
            job._callbacks.append(wake)
        await finished
        return job

    # -- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started_at = RUNNING, _now()
                job.version += 1
                self.store.save(job)
            batch = self._gather(job) if self.max_batch > 1 else [job]
            if len(batch) == 1:
                self._run(job)
            else:
                self._run_batch(batch)

    def _run(self, job: Job) -> None:
        from easel.storage.outputs import save_result

        started = time.perf_counter()

        def on_progress(progress: Progress) -> None:
            preview = None if progress.preview is None else _png(progress.preview)
            with self._lock:
                job.step, job.total = progress.step, progress.total
                if preview is not None:
                    job.preview, job.preview_step = preview, progress.step
                job.version += 1

        try:
            result = self.runner(job, on_progress=on_progress, limits=self.limits)
            saved, _ = save_result(result, gallery=self.gallery, output=None, grid=False)
        except Cancelled as error:
            with self._lock:
                self._finish(job, CANCELLED, error=error)
            return
        except EaselError as error:
            with self._lock:
                self._finish(job, FAILED, error=error)
            return
        except Exception as error:  # an easel bug: logged with its traceback, reported briefly
            log.exception("job %s failed unexpectedly", job.id)
            with self._lock:
                self._finish(job, FAILED, error=GenerationFailed(f"unexpected {type(error).__name__}"))
            return
        finally:
            self._durations.append(time.perf_counter() - started)
        self._succeed(job, result, saved)

    def _succeed(self, job: Job, result: GenerationResult, saved: list[Any], batched: int = 1) -> None:
        """Record a job's images and summary and finish it; `batched`: how many jobs shared
        its pipeline call (1: it ran alone), in the summary as "batched"."""
        # Keep what the doors render (ids, seeds, parameters), not the pixels: the images are
        # in the gallery, and a long-running server must not hold every result in memory.
        summary = result.summary()
        summary["request"] = public_request(summary["request"])
        summary["model_hashes"] = dict(result.model_hashes)
        summary["batched"] = batched
        images = [
            {"id": item.gallery_id, "seed": item.seed, "nsfw": item.nsfw, "parameters": result.parameters(i)}
            for i, item in enumerate(saved)
        ]
        with self._lock:
            job.images, job.summary = images, summary
            if not job.total:  # no step callback ran (nothing to denoise): report the steps run
                job.total = result.effective_steps
            job.step = job.total  # the pipeline's own count (PNDM runs one step more than asked)
            self._finish(job, SUCCEEDED)

    def _gather(self, first: Job) -> list[Job]:
        """The jobs that run with `first` (already taken) in one pipeline call: waiting jobs
        compatible with it (easel.batching.batch_key), taken out of the queue in order within
        the batch window, up to max_batch jobs and, together, the server's max images per
        request; incompatible ones keep their place. Called without the lock held."""
        key = self._key(first)
        if key is None:
            return [first]
        batch, images = [first], first.request.num_images
        most = None if self.limits is None else self.limits.max_images
        deadline = time.monotonic() + self.batch_window
        while True:
            with self._lock:
                for job in list(self._waiting):
                    if len(batch) >= self.max_batch:
                        break
                    fits = most is None or images + job.request.num_images <= most
                    if fits and job.id in self._keys and self._keys[job.id] == key:
                        self._waiting.remove(job)
                        job.status, job.started_at = RUNNING, _now()
                        job.version += 1
                        self.store.save(job)
                        batch.append(job)
                        images += job.request.num_images
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    if self._waiting:
                        self._lock.notify()  # a submit may have woken this worker: pass it on
                    return batch
                unknown = [job for job in self._waiting if job.id not in self._keys]
                if not unknown:
                    self._lock.wait(remaining)
                    unknown = [job for job in self._waiting if job.id not in self._keys]
            for job in unknown:  # reads model configs and counts tokens: not under the lock
                self._key(job)

    def _key(self, job: Job) -> str | None:
        from easel.batching import batch_key

        if job.id not in self._keys:
            self._keys[job.id] = batch_key(self.engine, job.request)
        return self._keys[job.id]

    def _run_batch(self, jobs: list[Job]) -> None:
        """Run compatible jobs as one pipeline call (Easel.generate_batch). Every job sees the
        batch's steps (previews: the first job's). Cancelling one job marks it cancelled when
        the call ends and discards its images; the call stops when every job is cancelled. A
        failure fails every job with the error."""
        from easel.storage.outputs import save_result

        started = time.perf_counter()

        def on_progress(progress: Progress) -> None:
            preview = None if progress.preview is None else _png(progress.preview)
            with self._lock:
                for job in jobs:
                    job.step, job.total = progress.step, progress.total
                    job.version += 1
                if preview is not None:  # of the first request's first image
                    jobs[0].preview, jobs[0].preview_step = preview, progress.step

        error: EaselError | None = None
        try:
            results = self.engine.generate_batch(
                [job.request for job in jobs],
                on_progress=on_progress,
                cancel=_AllCancelled(jobs),
                limits=self.limits,
                previews=self.preview_every,
            )
        except EaselError as failure:
            error = failure
        except Exception as failure:  # an easel bug: logged with its traceback, reported briefly
            log.exception("batch of jobs %s failed unexpectedly", ", ".join(job.id for job in jobs))
            error = GenerationFailed(f"unexpected {type(failure).__name__}")
        finally:
            self._durations.append(time.perf_counter() - started)
        if error is not None:
            with self._lock:
                for job in jobs:
                    self._finish(job, CANCELLED if isinstance(error, Cancelled) else FAILED, error=error)
            return
        for job, result in zip(jobs, results, strict=True):
            if job.cancel.is_set():
                with self._lock:
                    self._finish(job, CANCELLED, error=Cancelled("cancelled while running in a batch"))
                continue
            try:
                saved, _ = save_result(result, gallery=self.gallery, output=None, grid=False)
            except EaselError as failure:
                with self._lock:
                    self._finish(job, FAILED, error=failure)
                continue
            self._succeed(job, result, saved, batched=len(jobs))

    def _run_here(
        self, job: Job, *, on_progress: ProgressCallback, limits: Limits | None
    ) -> GenerationResult:
        """The default runner: this process's Easel."""
        return self.engine.generate(
            job.request,
            on_progress=on_progress,
            cancel=job.cancel,
            limits=limits,
            previews=self.preview_every,
        )

    def _finish(self, job: Job, status: str, error: EaselError | None = None) -> None:
        """Record the end of a job and wake its waiters (called with the lock held)."""
        job.status, job.finished_at = status, _now()
        self._keys.pop(job.id, None)
        job.preview = None  # previews are for watching a running job; the images are in the gallery
        if error is not None:
            job.error = {"type": _kind(error), "message": public_message(str(error)),
                         "field": getattr(error, "field", None)}  # fmt: skip
        job.version += 1
        self.store.save(job)
        job.done.set()
        callbacks, job._callbacks = job._callbacks, []
        for callback in callbacks:
            callback()

    def _forget_old(self, keep: int = 1000) -> None:
        """Bound memory: finished jobs beyond `keep` are served from their records."""
        if len(self._jobs) > keep:
            for job_id in [i for i, j in self._jobs.items() if j.finished][: len(self._jobs) - keep]:
                del self._jobs[job_id]


def _kind(error: EaselError) -> str:
    """The name of the error's class in the documented tree (subclasses report their parent)."""
    tree = {cls.__name__ for cls in EaselError.__subclasses__()}
    return next((cls.__name__ for cls in type(error).__mro__ if cls.__name__ in tree), "GenerationFailed")


def _batching_is_local(max_batch: int) -> InvalidRequest:
    return InvalidRequest(
        f"invalid max_batch={max_batch}: batching runs compatible jobs as one call of this process's "
        "engine, so it cannot go with another runner (scale-out, --ray); use --max-batch 1",
        field="max_batch",
        value=max_batch,
    )


class _AllCancelled:
    """A batch's cancel token: set once every job of the batch is cancelled."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def is_set(self) -> bool:
        return all(job.cancel.is_set() for job in self.jobs)


def _png(image: Any) -> bytes:
    """A preview as PNG bytes (fast compression: it is made between denoising steps)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _is_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
