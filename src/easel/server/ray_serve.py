"""Scale-out on Ray Serve: the same server, with generation in a deployment of workers.

Why Ray Serve and not a home-made pool: it already places replicas on GPUs across machines,
restarts dead ones, autoscales, and routes by model (model multiplexing), which is what a
multi-GPU image server needs. What stays in the ingress (the usual FastAPI app, one process):
the three APIs, the web UI, auth, limits, the bounded queue, job records and the gallery
(SQLite in its EASEL_HOME). Each worker replica is an Easel with its own pipeline cache; it
streams a job's progress back and ends with the GenerationResult, which the ingress stores.

- Routing: a job's model is its multiplexed model id, so Ray sends it to a replica that already
  holds that model; a replica keeps at most `max_cached_models` models (the engine's cache size).
- One job per replica at a time (`max_ongoing_requests=1`): a GPU runs one generation well.
- Cancel: the ingress cancels the streaming call; the worker's generator sees it and sets the
  job's cancel event, so the pipeline stops at its next step.
- A replica that dies mid-job: the job is retried once (Ray routes it to a live replica, and
  restarts the dead one); a second loss fails the job with a message saying so.
- Determinism: the worker runs the same Easel.generate with the ingress's settings, so a request
  gives the same bytes whichever replica runs it (same hardware) and as `easel serve` alone.

Ray is imported only here and only when scale-out is asked for (`easel[ray]`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.config import Settings
from easel.errors import Cancelled, EaselError, GenerationFailed, UnsupportedFeature

if TYPE_CHECKING:
    from easel.engine import ProgressCallback
    from easel.limits import Limits
    from easel.request import GenerationRequest
    from easel.result import GenerationResult
    from easel.server.jobs import Job

log = logging.getLogger("easel.server")

APP_NAME = "easel-workers"  # the Ray Serve application `easel serve --ray` deploys
DEPLOYMENT = "EaselWorker"
INSTALL = "pip install 'easel[ray]'"
DEFAULT_MODEL = "easel-demo"  # the routing id of requests that name no model (the bundled model)


@dataclass(frozen=True)
class ScaleOut:
    """How many workers, and what each needs from the cluster."""

    address: str | None = None  # None: RAY_ADDRESS / a running local Ray, else start one
    workers: int = 1  # fixed replicas (ignored when min/max are given)
    min_workers: int | None = None  # autoscaling between these (both or neither)
    max_workers: int | None = None
    gpus_per_worker: float | None = None  # None: 1 when the settings' device is CUDA, else 0
    cpus_per_worker: float = 1.0
    memory_per_worker_gb: float | None = None  # Ray's `memory` resource for each replica

    def __post_init__(self) -> None:
        def refuse(name: str, value: object, why: str) -> None:
            from easel.errors import InvalidRequest

            raise InvalidRequest(f"invalid {name}={value!r}: {why}", field=name, value=value)

        if self.workers < 1:
            refuse("workers", self.workers, "must be >= 1")
        if (self.min_workers is None) != (self.max_workers is None):
            refuse("min_workers", self.min_workers, "give both --min-workers and --max-workers")
        if self.min_workers is not None and self.max_workers is not None:
            if self.min_workers < 0:
                refuse("min_workers", self.min_workers, "must be >= 0")
            if self.max_workers < max(1, self.min_workers):
                refuse("max_workers", self.max_workers, "must be >= 1 and >= --min-workers")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            refuse("gpus_per_worker", self.gpus_per_worker, "must be >= 0 (fractions allowed)")
        if self.cpus_per_worker <= 0:
            refuse("cpus_per_worker", self.cpus_per_worker, "must be > 0 (fractions allowed)")
        if self.memory_per_worker_gb is not None and self.memory_per_worker_gb <= 0:
            refuse("memory_per_worker_gb", self.memory_per_worker_gb, "must be > 0")

    @property
    def most_workers(self) -> int:
        """Jobs the ingress hands out at once: one per replica there can be."""
        return self.max_workers if self.max_workers is not None else self.workers

    def deployment_options(self, settings: Settings) -> dict[str, Any]:
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if settings.device.startswith("cuda") else 0.0
        actor: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "num_gpus": gpus}
        if self.memory_per_worker_gb is not None:
            actor["memory"] = int(self.memory_per_worker_gb * 1024**3)
        options: dict[str, Any] = {
            "name": DEPLOYMENT,
            "ray_actor_options": actor,
            "max_ongoing_requests": 1,
            # a replica that loads a 10 GB model is busy a while: give a dead one time to go
            "graceful_shutdown_timeout_s": 5,
        }
        if self.min_workers is not None:
            options["autoscaling_config"] = {
                "min_replicas": self.min_workers,
                "max_replicas": self.max_workers,
                "target_ongoing_requests": 1,
            }
        else:
            options["num_replicas"] = self.workers
        return options


def require_ray() -> None:
    """Refuse scale-out with the install command when Ray Serve is not installed."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise UnsupportedFeature(f"--ray needs Ray Serve, which is not installed: {INSTALL}") from None


def worker_settings(settings: Settings) -> dict[str, Any]:
    """The settings a worker runs with: the ingress's, less its secret (workers take no
    requests of their own). The same device, dtype, threads and speed options give the same
    pixels as the one-process server."""
    values = asdict(settings)
    values["api_key"] = None
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


def routing_id(request: GenerationRequest) -> str:
    """The model a job needs, as Ray Serve's multiplexed model id."""
    return request.model or DEFAULT_MODEL


class EaselWorker:
    """One replica: an Easel and its pipeline cache. Wrapped by Ray Serve in `worker_app`."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from ray import serve

        from easel.engine import Easel
        from easel.server.app import import_libraries

        import_libraries()
        hints = {f.name for f in fields(Settings)}
        self.settings = Settings(**{k: v for k, v in settings.items() if k in hints})
        self.engine = Easel(self.settings)

        async def hold(model_id: str) -> str:
            # The engine's cache loads the weights on the job's first step; this only tells
            # Ray which models this replica holds, so it routes their jobs here.
            return model_id

        models = max(1, self.settings.max_cached_models)
        self.hold = serve.multiplexed(max_num_models_per_replica=models)(hold)

    async def generate(self, request_fields: dict[str, Any], limits: Limits | None) -> Any:
        """Run one job: yields {"worker"}, then {"progress"} per step, then {"result"} or
        {"error"}. Cancelling the call (the ingress does it) stops the pipeline at its next step."""
        from ray import serve

        from easel.request import GenerationRequest

        await self.hold(serve.get_multiplexed_model_id())
        yield {"worker": serve.get_replica_context().replica_id.to_full_id_str()}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def send(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def run() -> None:
            try:
                request = GenerationRequest.from_fields(request_fields)
                result = self.engine.generate(
                    request,
                    on_progress=lambda p: send({"progress": p}),
                    cancel=cancel,
                    limits=limits,
                    previews=self.settings.preview_every,  # the server's, as in one process
                )
                send({"result": result})
            except EaselError as error:
                send({"error": error_record(error)})
            except Exception as error:  # an easel bug: logged on the worker, reported briefly
                log.exception("job failed unexpectedly on this worker")
                send({"error": error_record(GenerationFailed(f"unexpected {type(error).__name__}"))})

        running = loop.run_in_executor(None, run)
        try:
            while True:
                event = await events.get()
                yield event
                if "progress" not in event:
                    break
        except asyncio.CancelledError:
            cancel.set()  # the pipeline raises Cancelled at its next step
            await asyncio.shield(running)
            raise
        await running


def error_record(error: EaselError) -> dict[str, Any]:
    """An error as the job records keep it; easel.server.jobs.error_from reads it back."""
    from easel.server.jobs import _kind

    return {"type": _kind(error), "message": str(error), "field": getattr(error, "field", None)}


def worker_app(settings: Settings, scale: ScaleOut) -> Any:
    """The workers as a Ray Serve application (bind()-ed, ready for serve.run)."""
    from ray import serve

    deployment = serve.deployment(EaselWorker).options(**scale.deployment_options(settings))
    return deployment.bind(worker_settings(settings))


class RayRunner:
    """The job queue's runner (easel.server.jobs.Runner) when generation runs on Ray Serve."""

    def __init__(self, handle: Any, *, stored_inputs: Path, owns: str | None = None) -> None:
        self.handle = handle
        self.stored_inputs = stored_inputs  # the ingress gallery's inputs (replays refer to them)
        self.owns = owns  # the application this ingress deployed (deleted at shutdown), if any

    def __call__(self, job: Job, *, on_progress: ProgressCallback, limits: Limits | None) -> GenerationResult:
        fields_ = inline_stored_inputs(job.request, self.stored_inputs)
        lost: list[str] = []
        while True:
            try:
                return self._attempt(job, fields_, on_progress, limits)
            except _WorkerLost as loss:
                lost.append(loss.worker)
                if job.cancel.is_set():
                    raise Cancelled("cancelled while its worker stopped") from None
                if len(lost) == 2:
                    raise GenerationFailed(
                        f"the worker running this job stopped ({lost[0]}); retried once on "
                        f"another worker, which stopped too ({lost[1]})"
                    ) from None
                log.warning("job %s: worker %s stopped; retrying once", job.id, loss.worker)

    def _attempt(
        self, job: Job, fields_: dict[str, Any], on_progress: ProgressCallback, limits: Limits | None
    ) -> GenerationResult:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError, RequestCancelledError

        call = self.handle.options(stream=True, multiplexed_model_id=routing_id(job.request))
        stream = call.generate.remote(fields_, limits)
        over = threading.Event()
        watcher = threading.Thread(target=_cancel_when_asked, args=(job, stream, over), daemon=True)
        watcher.start()
        worker, step = "unknown worker", 0
        try:
            for event in stream:
                if "worker" in event:
                    worker = job.worker = event["worker"]
                elif "progress" in event:
                    step = event["progress"].step
                    on_progress(event["progress"])
                elif "error" in event:
                    from easel.server.jobs import error_from

                    raise error_from(event["error"])
                else:
                    return event["result"]
        except RequestCancelledError:
            raise Cancelled(f"cancelled after step {step}") from None
        except DeploymentUnavailableError:
            raise GenerationFailed(
                f"the Ray Serve workers ({DEPLOYMENT}) are not available: the deployment was removed "
                "or the cluster is gone"
            ) from None
        except (ActorDiedError, ActorUnavailableError, RayActorError) as error:
            log.info("job %s: worker %s lost: %s", job.id, worker, type(error).__name__)
            raise _WorkerLost(worker) from None
        finally:
            over.set()
        raise GenerationFailed(f"the worker {worker} ended the job without a result")

    def close(self) -> None:
        """Remove the workers this ingress deployed (a cluster's other applications stay)."""
        if self.owns is None:
            return
        from ray import serve

        try:
            serve.delete(self.owns)
        except Exception:  # the cluster may already be gone at shutdown
            log.debug("could not delete %s", self.owns, exc_info=True)


class _WorkerLost(Exception):
    def __init__(self, worker: str) -> None:
        super().__init__(worker)
        self.worker = worker


def _cancel_when_asked(job: Job, stream: Any, over: threading.Event) -> None:
    """Cancel the streaming call when the job is cancelled (queue cancel, A1111 /interrupt)."""
    while not over.is_set():
        if job.cancel.wait(0.1):
            if not over.is_set():
                stream.cancel()
            return


def inline_stored_inputs(request: GenerationRequest, folder: Path) -> dict[str, Any]:
    """The request's fields with `easel-input:` references (inputs the ingress's gallery stored,
    which replays use) replaced by data URLs: a worker on another machine has no such folder."""
    from easel.storage.images import INPUT_SCHEME, stored_input_path

    def inline(reference: Any, field: str) -> Any:
        if not isinstance(reference, str) or not reference.startswith(INPUT_SCHEME):
            return reference
        data = stored_input_path(reference, field=field, folder=folder).read_bytes()
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

    values = request.model_dump(mode="json")
    values["init_image"] = inline(values.get("init_image"), "init_image")
    values["mask_image"] = inline(values.get("mask_image"), "mask_image")
    references = values.get("reference_images") or []
    values["reference_images"] = [inline(ref, f"reference_images[{i}]") for i, ref in enumerate(references)]
    for index, unit in enumerate(values.get("controls") or []):
        unit["image"] = inline(unit.get("image"), f"controls[{index}].image")
    return values


def connect(settings: Settings, scale: ScaleOut) -> RayRunner:
    """Join (or start) Ray, deploy the workers, and return the queue's runner."""
    require_ray()
    import ray
    from ray import serve

    from easel.storage.gallery import inputs_folder

    if not ray.is_initialized():
        ray.init(address=scale.address, log_to_driver=False, include_dashboard=False)
    handle = serve.run(worker_app(settings, scale), name=APP_NAME, route_prefix=None)
    return RayRunner(handle, stored_inputs=inputs_folder(settings.home), owns=APP_NAME)


def application(args: dict[str, Any]) -> Any:
    """A Ray Serve application builder for `serve run easel.server.ray_serve:application` or a
    config file's `import_path`: the easel ingress (the FastAPI app, one replica) and its
    workers. `args` are ScaleOut's fields (workers, min_workers, ...) and `ingress_cpus` (1);
    settings come from the EASEL_* variables (runtime_env env_vars in a config file)."""
    from ray import serve

    known = {f.name for f in fields(ScaleOut)} | {"ingress_cpus"}
    if unknown := sorted(set(args) - known):
        from easel.errors import InvalidRequest

        raise InvalidRequest(f"unknown application argument {unknown[0]!r}: use {', '.join(sorted(known))}")
    scale = ScaleOut(**{k: _number(v) for k, v in args.items() if k != "ingress_cpus"})
    settings = Settings.from_env()

    class EaselIngress:
        def __init__(self, workers: Any) -> None:
            from easel.storage.gallery import inputs_folder

            self.runner = RayRunner(workers, stored_inputs=inputs_folder(settings.home))

        def __serve_build_asgi_app__(self) -> Any:
            from easel.server.app import create_app

            return create_app(replace(settings, server_workers=scale.most_workers), runner=self.runner)

    ingress = serve.deployment(
        serve.ingress()(EaselIngress),
        name="EaselIngress",
        num_replicas=1,  # the queue, job records and gallery live in this one replica
        ray_actor_options={"num_cpus": float(args.get("ingress_cpus", 1))},
    )
    return ingress.bind(worker_app(settings, scale))


def _number(value: Any) -> Any:
    """`serve run ... workers=2` passes strings; config files pass numbers."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return float(value)
    return value
