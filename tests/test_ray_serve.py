"""Scale-out on Ray Serve: a real local Ray instance (2 CPUs) with two worker replicas behind
the usual app (the ingress). Jobs through the three APIs give the same pixels as the
one-process server; a model's jobs stay on the replica that holds it; cancel reaches the
worker; a replica killed mid-job ends in a retried job and a recovered deployment."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import TINY_FLAGGING, TINY_SD15, TINY_SD15_OLD_ID
from server_support import free_port, wait_for

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def cluster(hf_home: Path) -> Iterator[Any]:
    """Local Ray (2 CPUs) with two worker replicas of half a CPU each; the environment (HF cache,
    offline, one thread) is this process's, which the local workers inherit."""
    from ray import serve

    from easel import Settings
    from easel.server.ray_serve import ScaleOut, connect

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # Ray's HTTP proxy (used by the Serve application test) on a free port, not 8000
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        runner = connect(Settings.from_env(), ScaleOut(workers=2, cpus_per_worker=0.5))
        yield SimpleNamespace(runner=runner, http_port=port)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def ingress(cluster: Any, engine: Any, tmp_path: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from easel import Settings
    from easel.server import create_app

    app = create_app(Settings.from_env(home=tmp_path, server_workers=2), engine=engine, runner=cluster.runner)
    with TestClient(app) as client:
        yield client


def finished(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (record := client.get(f"/api/v1/jobs/{job_id}").json())["status"]
            in ("succeeded", "failed", "cancelled")
            and record
        ),
        timeout=timeout,
        interval=0.1,
    )


def test_three_apis_at_once_give_the_one_process_pixels(ingress: Any, engine: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from easel import Settings
    from easel.server import create_app

    native = [{"model": model, "prompt": f"a red circle {seed}", "seed": seed, "steps": 3}
              for seed, model in ((1, TINY_SD15), (2, TINY_SD15_OLD_ID), (3, TINY_SD15))]  # fmt: skip
    a1111 = {"prompt": "a blue square", "seed": 7, "steps": 3, "width": 64, "height": 64,
             "override_settings": {"sd_model_checkpoint": TINY_SD15}}  # fmt: skip
    openai = {"model": TINY_SD15, "prompt": "a green triangle", "size": "64x64",
              "response_format": "b64_json", "seed": 11, "steps": 3}  # fmt: skip
    answers: dict[str, Any] = {}

    def call(name: str, path: str, body: dict[str, Any]) -> None:
        answers[name] = ingress.post(path, json=body)

    jobs = [ingress.post("/api/v1/jobs", json=body).json()["id"] for body in native]
    threads = [threading.Thread(target=call, args=("a1111", "/sdapi/v1/txt2img", a1111)),
               threading.Thread(target=call, args=("openai", "/v1/images/generations", openai))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    records = [finished(ingress, job_id) for job_id in jobs]
    assert [r["status"] for r in records] == ["succeeded"] * 3, records
    assert answers["a1111"].status_code == 200 and answers["openai"].status_code == 200
    assert all(r["worker"].startswith("SERVE_REPLICA::") for r in records)
    scaled = [pixels(ingress.get(r["images"][0]["url"]).content) for r in records]
    scaled.append(pixels(base64.b64decode(answers["a1111"].json()["images"][0])))
    scaled.append(pixels(base64.b64decode(answers["openai"].json()["data"][0]["b64_json"])))
    # the same requests on the one-process server
    app = create_app(Settings.from_env(home=tmp_path / "alone"), engine=engine)
    with TestClient(app) as alone:
        jobs = [alone.post("/api/v1/jobs", json=body).json()["id"] for body in native]
        here = [pixels(alone.get(finished(alone, j)["images"][0]["url"]).content) for j in jobs]
        here.append(pixels(base64.b64decode(alone.post("/sdapi/v1/txt2img", json=a1111).json()["images"][0])))
        reply = alone.post("/v1/images/generations", json=openai)
        here.append(pixels(base64.b64decode(reply.json()["data"][0]["b64_json"])))
    for index, (a, b) in enumerate(zip(scaled, here, strict=True)):
        assert np.array_equal(a, b), f"request {index} differs between Ray Serve and one process"


def test_a_models_jobs_stay_on_the_replica_that_holds_it(ingress: Any) -> None:
    # models that one replica holds (the earlier test ran TINY_SD15 on both, OLD_ID on one)
    for model in (TINY_FLAGGING, TINY_SD15_OLD_ID):
        ran = []
        for seed in range(3):
            body = {"model": model, "prompt": "a dot", "seed": seed, "steps": 2}
            job = ingress.post("/api/v1/jobs", json=body).json()
            record = finished(ingress, job["id"])
            assert record["status"] == "succeeded", record
            ran.append(record["worker"])
        assert len(set(ran)) == 1, f"{model} ran on {ran}"


def test_cancel_reaches_the_worker(ingress: Any) -> None:
    body = {"model": TINY_SD15, "prompt": "a dot", "seed": 5, "steps": 150, "width": 256, "height": 256}
    job = ingress.post("/api/v1/jobs", json=body).json()
    wait_for(lambda: ingress.get(f"/api/v1/jobs/{job['id']}").json()["progress"]["step"] >= 2, timeout=120)
    # live previews come through from the worker too (A1111's progress route shows the latest)
    preview = wait_for(lambda: ingress.get("/sdapi/v1/progress").json()["current_image"], timeout=60)
    assert pixels(base64.b64decode(preview)).size > 0
    assert ingress.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    record = finished(ingress, job["id"])
    assert record["status"] == "cancelled" and record["progress"]["step"] < 150, record
    # the worker stopped: it takes the next job of its model (one job per replica at a time)
    body = {"model": TINY_SD15, "prompt": "a dot", "seed": 6, "steps": 2}
    follow = ingress.post("/api/v1/jobs", json=body).json()
    after = finished(ingress, follow["id"], timeout=60)
    assert after["status"] == "succeeded"


def test_a_replica_killed_mid_job_retries_and_the_deployment_recovers(ingress: Any) -> None:
    from ray import serve

    body = {"model": TINY_SD15, "prompt": "a dot", "seed": 9, "steps": 60, "width": 128, "height": 128}
    job = ingress.post("/api/v1/jobs", json=body).json()
    running = wait_for(
        lambda: (r := ingress.get(f"/api/v1/jobs/{job['id']}").json())["progress"]["step"] >= 2 and r,
        timeout=120,
    )
    victim = running["worker"]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
    try:
        record = finished(ingress, job["id"], timeout=240)
    except AssertionError:
        raise AssertionError(ingress.get(f"/api/v1/jobs/{job['id']}").json()) from None
    assert record["status"] == "succeeded", record
    assert record["worker"] != victim  # the retry ran on another replica
    app = "easel-workers"

    def recovered() -> bool:
        status = serve.status().applications[app]
        deployment = status.deployments["EaselWorker"]
        return status.status == "RUNNING" and deployment.replica_states.get("RUNNING", 0) == 2

    wait_for(recovered, timeout=120, interval=0.5)


def test_the_serve_application_serves_the_same_api_from_ray(cluster: Any, tmp_path: Path) -> None:
    """`serve run easel.server.ray_serve:application` / a config file: the ingress is a Ray
    Serve deployment too, behind Ray's HTTP proxy."""
    import json
    import os
    import urllib.request

    from ray import serve

    from easel.server.ray_serve import application

    port = cluster.http_port
    os.environ["EASEL_HOME"], home = str(tmp_path), os.environ["EASEL_HOME"]
    try:
        app = application({"workers": "1", "cpus_per_worker": "0.25", "ingress_cpus": 0.25})
        serve.run(app, name="easel", route_prefix="/")
        body = json.dumps({"model": TINY_SD15, "prompt": "a dot", "seed": 3, "steps": 2}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/generate", data=body,
                                         headers={"content-type": "application/json"})  # fmt: skip
        record = json.loads(urllib.request.urlopen(request, timeout=120).read())
        assert record["status"] == "succeeded" and record["worker"].startswith("SERVE_REPLICA::easel#")
        image = urllib.request.urlopen(f"http://127.0.0.1:{port}{record['images'][0]['url']}").read()
        assert pixels(image).shape == (64, 64, 3)
    finally:
        os.environ["EASEL_HOME"] = home
        serve.delete("easel")
