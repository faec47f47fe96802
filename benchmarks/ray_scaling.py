"""Scale-out throughput: 16 concurrent bundled-model jobs through the native API of an easel
server whose jobs run on 1, then 2, Ray Serve worker replicas (one torch thread each), and the
time to the first image after a cold deploy (Ray started, workers deployed, first job done).

    python benchmarks/ray_scaling.py [--jobs 16] [--steps 20] [--replicas 0 1 2]

Runs offline on the bundled model; prints one row per replica count (0: the one-process server,
no Ray, for comparison) and the throughput ratio of the last to the first Ray row.
Each replica count gets a fresh local Ray instance (num_cpus = the machine's cores), so "cold"
includes starting Ray, importing easel/diffusers in the replicas and loading the model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def run(replicas: int, jobs: int, steps: int) -> dict[str, float]:
    import ray
    from fastapi.testclient import TestClient
    from ray import serve

    from easel import Settings
    from easel.server import create_app
    from easel.server.ray_serve import ScaleOut, connect

    cores = os.cpu_count() or 2
    started = time.perf_counter()
    if replicas:
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        home = Path(tempfile.mkdtemp(prefix="easel-ray-bench-"))
        settings = Settings.from_env(
            home=home, threads=1, server_workers=max(1, replicas), queue_size=jobs + 4
        )
        runner = None
        if replicas:
            runner = connect(settings, ScaleOut(workers=replicas, cpus_per_worker=cores / (replicas + 1)))
        app = create_app(settings, runner=runner)
        with TestClient(app) as client:
            first = client.post(
                "/api/v1/generate", json={"prompt": "a red circle", "seed": 0, "steps": steps}
            )
            assert first.status_code == 200, first.text
            cold = time.perf_counter() - started
            # warm every replica (each loads the model once) before timing throughput
            warm = [client.post("/api/v1/jobs", json={"prompt": "warm", "seed": i, "steps": 2}).json()["id"]
                    for i in range(replicas * 2)]  # fmt: skip
            _wait(client, warm)
            began = time.perf_counter()
            ids = [
                client.post(
                    "/api/v1/jobs", json={"prompt": f"a blue square {i}", "seed": i, "steps": steps}
                ).json()["id"]
                for i in range(jobs)
            ]
            records = _wait(client, ids)
            elapsed = time.perf_counter() - began
            assert all(r["status"] == "succeeded" for r in records), records
            workers = len({r["worker"] for r in records})
    finally:
        if replicas:
            serve.shutdown()
            ray.shutdown()
    return {"replicas": replicas, "cold_s": cold, "elapsed_s": elapsed, "jobs_per_s": jobs / elapsed,
            "workers_used": workers}  # fmt: skip


def _wait(client: object, ids: list[str]) -> list[dict]:
    """Each job's final record; polls only unfinished jobs, newest first, twice a second (the
    polling must not take the CPU the workers need)."""
    done: dict[str, dict] = {}
    while len(done) < len(ids):
        for job_id in reversed([i for i in ids if i not in done]):
            record = client.get(f"/api/v1/jobs/{job_id}").json()  # type: ignore[attr-defined]
            if record["status"] not in ("succeeded", "failed", "cancelled"):
                break  # the older ones are likely still running too
            done[job_id] = record
        time.sleep(0.5)
    return [done[i] for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--replicas", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [run(count, args.jobs, args.steps) for count in args.replicas]
    print(f"| replicas | jobs | steps | cold start to first image | {args.jobs} jobs took | jobs/s | used |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        name = row["replicas"] or "none (one process)"
        print(f"| {name} | {args.jobs} | {args.steps} | {row['cold_s']:.1f} s | "
              f"{row['elapsed_s']:.1f} s | {row['jobs_per_s']:.2f} | {row['workers_used']} |")  # fmt: skip
    scaled = [row for row in rows if row["replicas"]]
    if len(scaled) > 1:
        print(f"throughput {scaled[-1]['replicas']} vs {scaled[0]['replicas']} replicas: "
              f"{scaled[-1]['jobs_per_s'] / scaled[0]['jobs_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
