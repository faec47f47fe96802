"""The server's doors: prompts checked before queueing, limits on the concrete request."""

from __future__ import annotations

import pytest
from conftest import TINY_SD15
from server_support import b64, data_url, server

from easel.prompts.checks import MAX_PROMPT_CHARS


@pytest.fixture
def client(engine, tmp_path):
    with server(tmp_path, engine, max_steps=4, max_pixels=64 * 64 - 1) as client:
        yield client


@pytest.mark.parametrize(
    ("route", "body", "field", "reason"),
    [
        ("/api/v1/jobs", {"prompt": '("a","b").blend(1)'}, "prompt", "not valid Compel syntax"),
        ("/api/v1/jobs", {"prompt": "x", "negative_prompt": "(" * 30 + "a" + ")" * 30}, "negative_prompt",
         "nested 30 deep"),
        ("/api/v1/jobs", {"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", "at most 4000 characters"),
        ("/sdapi/v1/txt2img", {"prompt": "(" * 800 + "a" + ")" * 800}, "prompt", "nested 800 deep"),
        ("/v1/images/generations", {"prompt": "y" * 1_000_000}, "prompt", "at most 4000 characters"),
    ],
)  # fmt: skip
def test_bad_prompts_are_refused_at_the_door_and_never_queued(client, route, body, field, reason):
    answer = client.post(route, json={"steps": 1, **body} if route == "/api/v1/jobs" else body)
    assert answer.status_code == 422, answer.text
    assert reason in answer.text
    assert len(answer.text) < 2000  # a megabyte prompt is not echoed back
    assert client.get("/api/v1/jobs").json() == []


def test_the_default_steps_are_checked_on_the_concrete_request(client):
    answer = client.post(
        "/api/v1/generate", json={"model": TINY_SD15, "prompt": "x", "width": 32, "height": 32}
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "steps"
    assert "steps=50 (the default)" in error["message"]


def test_heun_counts_its_model_evaluations(client):
    answer = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "x", "steps": 3, "sampler_name": "Heun", "width": 32, "height": 32,
              "override_settings": {"sd_model_checkpoint": TINY_SD15}},
    )  # fmt: skip
    assert answer.status_code == 422
    assert "so 3 steps count as 6" in answer.json()["detail"]


def test_the_size_of_an_init_image_is_checked(client, init_png):
    answer = client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "x", "steps": 2, "init_images": [b64(init_png)],
              "override_settings": {"sd_model_checkpoint": TINY_SD15}},
    )  # fmt: skip
    assert answer.status_code == 422
    assert "64x64" in answer.json()["detail"]
    ok = client.post(
        "/api/v1/generate", json={"model": TINY_SD15, "prompt": "a (red)1.1 circle", "steps": 2, "width": 32,
                                  "height": 32, "seed": 3},
    )  # fmt: skip
    assert ok.status_code == 200, ok.text


def test_a_mask_is_an_image_reference_like_any_other(client, init_png):
    """The native door takes GenerationRequest as it is: a mask path on the server is refused."""
    answer = client.post(
        "/api/v1/jobs",
        json={"prompt": "x", "steps": 2, "init_image": data_url(init_png), "mask_image": str(init_png)},
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "mask_image"
    assert "does not read local paths" in answer.json()["error"]["message"]


def test_an_outpainted_size_is_checked_at_the_door(client, init_png):
    """A 48x48 init image is within the 4095-pixel limit; outpainted to 80x64 it is not."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.open(init_png).resize((48, 48)).save(buffer, format="PNG")
    small = "data:image/png;base64," + __import__("base64").b64encode(buffer.getvalue()).decode()
    answer = client.post(
        "/api/v1/jobs", json={"prompt": "x", "steps": 2, "init_image": small, "outpaint": [0, 0, 32, 16]}
    )
    assert answer.status_code == 422
    assert "80x64" in answer.json()["error"]["message"]
    assert client.get("/api/v1/jobs").json() == []
