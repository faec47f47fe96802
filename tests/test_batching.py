"""Request batching (easel.batching, easel serve --max-batch): which requests share a pipeline
call, that each batched result is its request's own (pixels within the measured tolerance of a
solo run), and the queue gathering, cancelling and failing batches."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_FLAGGING, TINY_SD15
from server_support import server, wait_for

from easel import GenerationRequest, InvalidRequest
from easel.batching import batch_key, compatible
from easel.limits import Limits

BASE = {"model": TINY_SD15, "prompt": "a red circle", "steps": 3, "seed": 5}
LONG = " ".join(["a red circle on a blue square"] * 12)  # about 84 tokens: two 75-token chunks


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


COMPATIBLE = [
    ({}, {"prompt": "a blue dog", "negative_prompt": "ugly", "seed": 99, "num_images": 2}),
    ({"seed": None}, {"seed": None, "prompt": "another"}),
    ({"prompt": "a (red:1.4) circle"}, {"prompt": "plain words"}),  # Compel and the pipeline's own
    ({"prompt": LONG}, {"prompt": LONG + " again"}),  # both two chunks
    ({"scheduler": "DPM++ 2M Karras", "guidance_scale": 5.0}, {"scheduler": "DPM++ 2M Karras",
                                                              "guidance_scale": 5.0, "seed": 1}),
]  # fmt: skip
INCOMPATIBLE = [
    ({}, {"steps": 4}),
    ({}, {"width": 64, "height": 128}),
    ({}, {"scheduler": "Euler a"}),
    ({}, {"guidance_scale": 3.0}),
    ({}, {"model": TINY_FLAGGING}),
    ({}, {"clip_skip": 2}),
    ({}, {"tiling": True}),
    ({}, {"prompt_syntax": "a1111"}),
    ({}, {"safety_checker": False}),
    ({}, {"prompt": LONG}),  # two chunks against one: embeddings of different lengths
    ({}, {"negative_prompt": LONG}),
]


@pytest.mark.parametrize(("first", "second"), COMPATIBLE)
def test_compatible_pairs(engine, first, second):
    a, b = GenerationRequest(**{**BASE, **first}), GenerationRequest(**{**BASE, **second})
    assert compatible(engine, a, b) and compatible(engine, b, a)


@pytest.mark.parametrize(("first", "second"), INCOMPATIBLE)
def test_incompatible_pairs(engine, first, second):
    a, b = GenerationRequest(**{**BASE, **first}), GenerationRequest(**{**BASE, **second})
    assert batch_key(engine, a) is not None and not compatible(engine, a, b)


@pytest.mark.parametrize(
    "fields",
    [
        {"init_image": "x.png", "strength": 0.5},
        {"hires": {"scale": 2}},
        {"variation_seed": 3, "variation_strength": 0.5},
        {"seed_resize_from": (64, 128)},
        {"prompt": "a [cat:dog:0.5]"},  # prompt editing: a schedule of texts
        {"prompt": "a [cat|dog]", "prompt_syntax": "a1111"},  # alternation
        {"model": "no/such-model"},  # its own run reports why
    ],
)
def test_never_batched(engine, fields):
    assert batch_key(engine, GenerationRequest(**{**BASE, **fields})) is None


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_a_batch_gives_each_request_its_own_result_within_a_level_of_a_solo_run(engine, tmp_path):
    requests = [
        GenerationRequest(**BASE),
        GenerationRequest(
            **{**BASE, "prompt": "a (blue:1.3) dog", "negative_prompt": "ugly", "num_images": 2}
        ),
        GenerationRequest(**{**BASE, "prompt": "tree", "seed": None}),
    ]
    batched = engine.generate_batch(requests)
    assert len(batched) == 3
    assert [len(result.images) for result in batched] == [1, 2, 1]
    assert batched[1].seeds == [5, 6] and batched[2].request.seed is not None
    differences = []
    for request, result in zip(requests, batched, strict=True):
        assert result.request.prompt == request.prompt and result.request.styles == []
        solo = engine.generate(result.request)  # the recipe the gallery keeps: its concrete request
        assert solo.request == result.request and solo.seeds == result.seeds
        for alone, together in zip(solo.images, result.images, strict=True):
            differences.append(np.abs(pixels(alone) - pixels(together)))
    # measured on CPU (one torch thread): identical, or one level in a few pixels
    worst = max(int(d.max()) for d in differences)
    changed = max(float((d > 0).mean()) for d in differences)
    assert worst <= 1 and changed < 0.01, (worst, changed)

    # replay of a batched image gives its solo image (bit for bit: replay runs alone)
    path = batched[1].save(tmp_path / "batched.png", index=1)
    again, index = engine.replay(path)
    solo = engine.generate(batched[1].request)
    assert index == 1 and np.array_equal(pixels(again.images[1]), pixels(solo.images[1]))


def test_long_prompts_of_the_same_length_batch(engine):
    requests = [GenerationRequest(**{**BASE, "prompt": text}) for text in (LONG, LONG + " again")]
    batched = engine.generate_batch(requests)
    for result in batched:
        solo = engine.generate(result.request)
        assert np.abs(pixels(solo.images[0]) - pixels(result.images[0])).max() <= 1


def test_generate_batch_refuses_what_cannot_share_a_call(engine):
    with pytest.raises(InvalidRequest, match="cannot run as one batch"):
        engine.generate_batch([GenerationRequest(**BASE), GenerationRequest(**{**BASE, "steps": 4})])
    with pytest.raises(InvalidRequest, match="limit of 2 images"):
        engine.generate_batch(
            [GenerationRequest(**BASE), GenerationRequest(**{**BASE, "num_images": 2})],
            limits=Limits(max_images=2),
        )


# -- the queue ------------------------------------------------------------------------------


def queue_of(engine, tmp_path, max_images=8, **options):
    from easel.server.jobs import JobQueue, JobStore
    from easel.storage.gallery import Gallery

    gallery = Gallery(tmp_path)
    store = JobStore(gallery.database)
    return JobQueue(engine, gallery, store, size=16, limits=Limits(max_images=max_images), **options)


def submit_all(queue, requests):
    """Start the workers and submit every request while they cannot take one (all wait)."""
    queue.start()
    with queue._lock:
        return [queue.submit(request, "native") for request in requests]


def run_all(queue, requests):
    """Submit all at once and run them; the finished jobs."""
    jobs = submit_all(queue, requests)
    try:
        for job in jobs:
            assert job.done.wait(60)
    finally:
        queue.stop()
    return jobs


@pytest.fixture
def calls(engine, monkeypatch):
    """How many pipeline runs the engine made."""
    counted = []
    run = engine._run

    def counting(*args, **kwargs):
        counted.append(1)
        return run(*args, **kwargs)

    monkeypatch.setattr(engine, "_run", counting)
    return counted


def test_queue_runs_compatible_jobs_as_one_call_and_others_alone(engine, tmp_path, calls):
    queue = queue_of(engine, tmp_path, max_batch=4, batch_window_ms=20)
    requests = [GenerationRequest(**{**BASE, "seed": seed}) for seed in (1, 2)]
    requests.insert(1, GenerationRequest(**{**BASE, "steps": 2}))  # incompatible: keeps its place
    requests.append(GenerationRequest(**{**BASE, "prompt": "other", "num_images": 2}))
    jobs = run_all(queue, requests)
    assert [job.status for job in jobs] == ["succeeded"] * 4
    assert [job.summary["batched"] for job in jobs] == [3, 1, 3, 3]
    assert len(calls) == 2
    assert [job.describe()["result"]["batched"] for job in jobs] == [3, 1, 3, 3]
    assert [image["seed"] for image in jobs[3].images] == [5, 6]
    assert jobs[2].summary["request"]["seed"] == 2 and jobs[2].images[0]["seed"] == 2
    assert "Seed: 2," in jobs[2].images[0]["parameters"]
    record = queue.store.load(jobs[2].id)
    assert record is not None and record.summary["batched"] == 3


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_queue_batches_within_max_batch_and_max_images(engine, tmp_path, calls):
    queue = queue_of(engine, tmp_path, max_batch=2)
    jobs = run_all(queue, [GenerationRequest(**{**BASE, "seed": seed}) for seed in (1, 2, 3)])
    assert [job.summary["batched"] for job in jobs] == [2, 2, 1] and len(calls) == 2

    queue = queue_of(engine, tmp_path / "images", max_images=3, max_batch=4)  # 2 + 2 do not fit
    jobs = run_all(queue, [GenerationRequest(**{**BASE, "num_images": 2})] * 2)
    assert [job.summary["batched"] for job in jobs] == [1, 1]


def test_default_queue_never_batches(engine, tmp_path, calls):
    queue = queue_of(engine, tmp_path)
    assert queue.max_batch == 1
    jobs = run_all(queue, [GenerationRequest(**{**BASE, "seed": seed}) for seed in (1, 2, 3)])
    assert [job.summary["batched"] for job in jobs] == [1, 1, 1] and len(calls) == 3


SLOW = {**BASE, "steps": 150}  # a few seconds on the tiny model (stopped early)


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_cancelling_one_job_of_a_batch_discards_its_images_only(engine, tmp_path):
    queue = queue_of(engine, tmp_path, max_batch=4)
    jobs = submit_all(queue, [GenerationRequest(**{**BASE, "steps": 20, "seed": seed}) for seed in (1, 2)])
    try:
        wait_for(lambda: jobs[1].step >= 1)  # running, in the batch
        queue.cancel(jobs[1].id)
        for job in jobs:
            assert job.done.wait(120)
    finally:
        queue.stop()
    assert jobs[0].status == "succeeded" and jobs[0].summary["batched"] == 2
    assert jobs[1].status == "cancelled" and jobs[1].images == [] and jobs[1].error["type"] == "Cancelled"


def test_cancelling_every_job_of_a_batch_stops_it(engine, tmp_path):
    queue = queue_of(engine, tmp_path, max_batch=4)
    jobs = submit_all(queue, [GenerationRequest(**{**SLOW, "seed": seed}) for seed in (1, 2)])
    try:
        wait_for(lambda: jobs[1].step >= 1)
        for job in jobs:
            queue.cancel(job.id)
        for job in jobs:
            assert job.done.wait(60)
    finally:
        queue.stop()
    for job in jobs:
        assert job.status == "cancelled" and job.step < job.total  # stopped mid-way


def test_a_failing_batch_fails_each_job_with_the_error(engine, tmp_path, monkeypatch):
    from easel.errors import GenerationFailed

    def failing(*args, **kwargs):
        raise GenerationFailed("out of paint")

    monkeypatch.setattr(engine, "generate_batch", failing)
    queue = queue_of(engine, tmp_path, max_batch=4)
    jobs = run_all(queue, [GenerationRequest(**{**BASE, "seed": seed}) for seed in (1, 2)])
    for job in jobs:
        assert job.status == "failed" and job.error["message"] == "out of paint"


def test_batching_is_refused_with_another_runner_and_bad_settings(engine, tmp_path):
    from easel import Settings

    with pytest.raises(InvalidRequest, match=r"max_batch=2.*another runner"):
        queue_of(engine, tmp_path, max_batch=2, runner=lambda job, **_: None)
    queue = queue_of(engine, tmp_path, max_batch=2)
    queue.runner = lambda job, **_: None
    with pytest.raises(InvalidRequest, match="another runner"):
        queue.start()
    settings = Settings.from_env({"EASEL_MAX_BATCH": "4", "EASEL_BATCH_WINDOW_MS": "10"})
    assert (settings.max_batch, settings.batch_window_ms) == (4, 10)
    assert Settings().max_batch == 1
    with pytest.raises(InvalidRequest, match="max_batch"):
        Settings(max_batch=0)


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_server_batches_jobs_waiting_behind_a_running_one(engine, tmp_path):
    with server(tmp_path, engine, max_batch=4) as client:
        slow = client.post("/api/v1/jobs", json={**SLOW, "prompt": "slow"}).json()
        wait_for(lambda: client.get(f"/api/v1/jobs/{slow['id']}").json()["progress"]["step"] >= 1)
        ids = [client.post("/api/v1/jobs", json={**BASE, "seed": seed}).json()["id"] for seed in (1, 2, 3)]
        client.post(f"/api/v1/jobs/{slow['id']}/cancel")
        done = [wait_for(lambda i=i: (j := client.get(f"/api/v1/jobs/{i}").json())["finished_at"] and j)
                for i in ids]  # fmt: skip
    assert [job["status"] for job in done] == ["succeeded"] * 3
    assert [job["result"]["batched"] for job in done] == [3, 3, 3]
    assert [job["images"][0]["seed"] for job in done] == [1, 2, 3]


def assert_like_solo(engine, batched, tolerance=1):
    for result in batched:
        solo = engine.generate(result.request)
        for alone, together in zip(solo.images, result.images, strict=True):
            difference = np.abs(pixels(alone) - pixels(together))
            assert difference.max() <= tolerance and (difference > 0).mean() < 0.01


def test_sdxl_batches_with_pooled_embeddings(engine, sdxl_models):
    from conftest import TINY_SDXL, TINY_SDXL_REFINER

    common = {"model": TINY_SDXL, "steps": 2, "seed": 3}
    requests = [
        GenerationRequest(**common, prompt="a red circle"),  # the pipeline's own encode_prompt
        GenerationRequest(**common, prompt="a (blue:1.2) square", negative_prompt="blurry"),  # Compel
    ]
    assert compatible(engine, *requests)
    assert batch_key(engine, GenerationRequest(**common, prompt="x", refiner=TINY_SDXL_REFINER)) is None
    assert_like_solo(engine, engine.generate_batch(requests))


def test_controlnet_requests_batch_with_the_same_control(engine, controlnet_models, init_png):
    from conftest import TINY_CANNY

    unit = {"model": TINY_CANNY, "image": str(init_png), "preprocessor": "canny"}
    requests = [
        GenerationRequest(**BASE, controls=[unit]),
        GenerationRequest(**{**BASE, "prompt": "a green square", "seed": 9}, controls=[unit]),
    ]
    assert compatible(engine, *requests)
    assert not compatible(engine, requests[0], GenerationRequest(**BASE))
    other = GenerationRequest(**BASE, controls=[{**unit, "conditioning_scale": 0.5}])
    assert not compatible(engine, requests[0], other)
    assert_like_solo(engine, engine.generate_batch(requests))


def test_kandinsky_is_never_batched(engine, kandinsky_models):
    from conftest import TINY_KANDINSKY

    assert batch_key(engine, GenerationRequest(model=TINY_KANDINSKY, prompt="x", steps=2)) is None


def test_serve_refuses_max_batch_with_ray(tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    done = CliRunner().invoke(app, ["serve", "--ray", "--max-batch", "2"], env={"EASEL_HOME": str(tmp_path)})
    assert done.exit_code == 2 and "--max-batch > 1 cannot go with --ray" in done.output
    done = CliRunner().invoke(app, ["serve", "--max-batch", "0"], env={"EASEL_HOME": str(tmp_path)})
    assert done.exit_code == 2 and "max_batch" in done.output


def test_a_batch_that_does_not_fit_one_call_runs_alone(engine, monkeypatch):
    """Found only at the call (e.g. embeddings of other lengths than counted): each runs alone."""
    import easel.batching

    def unmergeable(*args, **kwargs):
        if easel.batching._CURRENT.get() is not None:  # in a batch; alone, nothing to merge
            raise easel.batching.Unmergeable("embeddings of different lengths")

    monkeypatch.setattr(easel.batching, "merge_batch", unmergeable)
    requests = [GenerationRequest(**{**BASE, "seed": seed}) for seed in (5, 8)]
    results = engine.generate_batch(requests)
    monkeypatch.undo()
    for result in results:
        assert np.array_equal(pixels(result.images[0]), pixels(engine.generate(result.request).images[0]))
