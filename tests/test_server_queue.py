"""The job queue through HTTP: determinism under concurrency, bounds, cancel, restart."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import TINY_SD15
from server_support import b64, data_url, server, wait_for

SLOW = {"model": TINY_SD15, "prompt": "slow", "steps": 150, "seed": 1}  # a few seconds on the tiny model


def mixed_requests(init_png) -> list[tuple[str, str, dict]]:
    """16+ requests over the three APIs: txt2img and img2img, several seeds, samplers, batches."""
    model = {"sd_model_checkpoint": TINY_SD15}
    requests: list[tuple[str, str, dict]] = []
    for i in range(6):
        requests.append(
            (
                "native",
                "/api/v1/generate?include_images=true",
                {
                    "model": TINY_SD15,
                    "prompt": f"native {i % 3}",
                    "steps": 2,
                    "seed": 100 + i % 3,
                    "scheduler": ["Euler a", "DPM++ 2M", None][i % 3],
                    "num_images": 1 + i % 2,
                },
            )
        )
    for i in range(5):
        requests.append(
            (
                "a1111",
                "/sdapi/v1/txt2img",
                {
                    "prompt": f"a1111 {i % 2}",
                    "steps": 2,
                    "seed": 200 + i % 2,
                    "width": 64,
                    "height": 64,
                    "sampler_name": "Euler",
                    "override_settings": model,
                },
            )
        )
    for i in range(3):
        requests.append(
            (
                "a1111",
                "/sdapi/v1/img2img",
                {
                    "prompt": "a1111 img2img",
                    "steps": 4,
                    "seed": 300 + i % 2,
                    "denoising_strength": 0.5,
                    "init_images": [b64(init_png)],
                    "override_settings": model,
                },
            )
        )
    for i in range(4):
        requests.append(
            (
                "openai",
                "/v1/images/generations",
                {
                    "prompt": f"openai {i % 2}",
                    "n": 1,
                    "size": "64x64",
                    "model": TINY_SD15,
                    "seed": 400 + i % 2,
                    "steps": 2,
                },
            )
        )
    requests.append(
        (
            "native",
            "/api/v1/generate?include_images=true",
            {
                "model": TINY_SD15,
                "prompt": "native img2img",
                "steps": 4,
                "seed": 500,
                "strength": 0.5,
                "init_image": data_url(init_png),
            },
        )
    )
    return requests


def images_of(kind: str, response) -> list[bytes]:
    assert response.status_code == 200, response.text
    body = response.json()
    if kind == "native":
        return [base64.b64decode(image["b64_png"]) for image in body["images"]]
    if kind == "a1111":
        return [base64.b64decode(image) for image in body["images"]]
    return [base64.b64decode(item["b64_json"]) for item in body["data"]]


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_concurrent_mixed_requests_give_the_same_bytes_as_one_by_one(engine, tmp_path, init_png):
    requests = mixed_requests(init_png)
    assert len(requests) >= 16
    with server(tmp_path, engine) as client:
        one_by_one = [images_of(kind, client.post(url, json=body)) for kind, url, body in requests]
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(client.post, url, json=body) for _, url, body in requests]
            concurrent = [
                images_of(kind, f.result()) for (kind, _, _), f in zip(requests, futures, strict=True)
            ]
    assert concurrent == one_by_one
    assert sum(len(images) for images in concurrent) >= 19


def running(client, job_id: str) -> bool:
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    return job["status"] == "running" and job["progress"]["step"] >= 1


def test_full_queue_is_429_with_retry_after_in_each_flavour(engine, tmp_path):
    with server(tmp_path, engine, queue_size=1) as client:
        first = client.post("/api/v1/jobs", json=SLOW).json()
        wait_for(lambda: running(client, first["id"]))
        second = client.post("/api/v1/jobs", json=SLOW)
        assert second.status_code == 202  # waits: the queue holds one
        native = client.post("/api/v1/jobs", json=SLOW)
        assert native.status_code == 429 and int(native.headers["retry-after"]) >= 1
        assert native.headers["x-should-retry"] == "true"
        assert native.json()["error"]["type"] == "QueueFull"
        a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1})
        assert (
            a1111.status_code == 429
            and a1111.json()["error"] == "QueueFull"
            and "retry-after" in a1111.headers
        )
        openai = client.post("/v1/images/generations", json={"prompt": "x"})
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
        assert "retry-after" in openai.headers
        progress = client.get("/sdapi/v1/progress").json()
        assert progress["state"]["job_count"] == 2 and 0 < progress["progress"] < 1
        assert progress["eta_relative"] > 0
        for job in (second.json(), first):
            client.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_cancel_queued_and_running_jobs(engine, tmp_path):
    with server(tmp_path, engine) as client:
        first = client.post("/api/v1/jobs", json=SLOW).json()
        second = client.post("/api/v1/jobs", json=SLOW).json()
        wait_for(lambda: running(client, first["id"]))
        cancelled = client.post(f"/api/v1/jobs/{second['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["progress"]["step"] == 0

        client.post(f"/api/v1/jobs/{first['id']}/cancel")
        stopped = wait_for(
            lambda: (j := client.get(f"/api/v1/jobs/{first['id']}").json())["finished_at"] and j
        )
        assert stopped["status"] == "cancelled" and stopped["error"]["type"] == "Cancelled"
        assert 1 <= stopped["progress"]["step"] < stopped["progress"]["total"]  # stopped mid-way
        assert stopped["images"] == []

        # A1111 interrupt stops the running job; its waiting caller gets 409 in the A1111 shape
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.post,
                "/sdapi/v1/txt2img",
                json={
                    "prompt": "slow",
                    "steps": 150,
                    "seed": 1,
                    "override_settings": {"sd_model_checkpoint": TINY_SD15},
                },
            )
            wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1)
            client.post("/sdapi/v1/interrupt")
            answer = waiting.result(timeout=60)
        assert answer.status_code == 409 and answer.json()["error"] == "Cancelled"
        assert answer.headers["x-should-retry"] == "false"


def test_restart_fails_running_jobs_and_runs_queued_ones(engine, tmp_path):
    from easel import GenerationRequest
    from easel.server.jobs import Job, JobStore
    from easel.storage.gallery import Gallery

    # what a killed server leaves: one job running, two queued (written as the server writes them)
    store = JobStore(Gallery(tmp_path).database)
    request = GenerationRequest(model=TINY_SD15, prompt="survivor", steps=2, seed=9)
    crashed = Job(id="a" * 32, request=request, source="native", created_at="2026-01-01T00:00:00+00:00")
    crashed.status = "running"
    store.save(crashed)
    for n, when in ((1, "2026-01-01T00:00:01+00:00"), (2, "2026-01-01T00:00:02+00:00")):
        store.save(Job(id=str(n) * 32, request=request, source="a1111", created_at=when))

    with server(tmp_path, engine) as client:
        failed = client.get(f"/api/v1/jobs/{'a' * 32}").json()
        assert failed["status"] == "failed" and failed["error"]["message"] == "interrupted by restart"
        for n in (1, 2):
            done = wait_for(
                lambda n=n: (j := client.get(f"/api/v1/jobs/{str(n) * 32}").json())["finished_at"] and j
            )
            assert done["status"] == "succeeded" and done["images"][0]["seed"] == 9
            assert client.get(done["images"][0]["url"]).status_code == 200
        listed = {job["id"]: job["status"] for job in client.get("/api/v1/jobs").json()}
        assert listed == {"a" * 32: "failed", "1" * 32: "succeeded", "2" * 32: "succeeded"}

    # and the records survive the next start as they are (nothing runs twice)
    with server(tmp_path, engine) as client:
        again = {job["id"]: job["status"] for job in client.get("/api/v1/jobs").json()}
        assert again == listed


def test_jobs_submitted_before_a_crash_run_after_restart(engine, tmp_path):
    """Submitted through HTTP to an app whose workers never started (a crash before they
    took the jobs), then a new app on the same home runs them."""
    import httpx

    from easel import Settings
    from easel.server import create_app

    app = create_app(Settings.from_env(home=tmp_path), engine=engine)  # no lifespan: no workers

    async def submit() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            ids = []
            for seed in (1, 2):
                response = await http.post(
                    "/api/v1/jobs", json={"model": TINY_SD15, "prompt": "x", "steps": 1, "seed": seed}
                )
                assert response.status_code == 202
                ids.append(response.json()["id"])
            return ids

    import asyncio

    ids = asyncio.run(submit())
    with server(tmp_path, engine) as client:
        for job_id in ids:
            done = wait_for(
                lambda j=job_id: (r := client.get(f"/api/v1/jobs/{j}").json())["finished_at"] and r
            )
            assert done["status"] == "succeeded"


@pytest.mark.parametrize("workers", [2])
def test_several_workers_still_never_run_pipelines_concurrently(engine, tmp_path, workers):
    """server_workers > 1 is allowed (one per device); on one device the engine serialises."""
    with server(tmp_path, engine, server_workers=workers) as client:
        bodies = [{"model": TINY_SD15, "prompt": "w", "steps": 2, "seed": s} for s in (1, 2, 3, 1)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda b: client.post("/api/v1/generate?include_images=true", json=b), bodies)
            )
        images = [json.dumps(a.json()["images"][0]["b64_png"]) for a in answers]
        assert images[0] == images[3] and len(set(images)) == 3
