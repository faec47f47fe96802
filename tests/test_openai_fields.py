"""The OpenAI door honours, accepts as harmless, or refuses by name every field it is sent:
OpenAI's fields easel does not build are accepted only at the value that changes nothing,
unknown fields are refused (422 naming them), and the accepted ones give the plain image."""

from __future__ import annotations

import io

import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import server

FAST = {"prompt": "a green triangle", "model": TINY_SD15, "size": "64x64", "steps": 2, "seed": 9}


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    with server(tmp_path_factory.mktemp("openai-home"), engine) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png_of(Image.new("RGB", (64, 64), (20, 40, 200)))


def refused(answer, field: str) -> str:
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field, error
    return error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quality", "hd"),
        ("quality", "high"),
        ("style", "vivid"),
        ("background", "transparent"),
        ("output_format", "webp"),
        ("output_compression", 50),
        ("complexity", "low"),
        ("frame_count", 4),
        ("frame_duration_ms", 100),
        ("svg", {"model": "x"}),
    ],
)
def test_generations_refuse_what_easel_does_not_build(client, field, value):
    message = refused(client.post("/v1/images/generations", json={**FAST, field: value}), field)
    assert message.startswith(f"invalid {field}=") and "easel" in message


@pytest.mark.parametrize("field", ["input_fidelity", "markup", "strength", "cfg_scale", "mask"])
def test_generations_refuse_unknown_fields_by_name(client, field):
    # input_fidelity, markup, mask are edits' fields; strength is easel's on edits only
    message = refused(client.post("/v1/images/generations", json={**FAST, field: "x"}), field)
    assert message.startswith(f"unknown field {field!r}")


def test_generations_accept_the_values_that_change_nothing(client):
    plain = client.post("/v1/images/generations", json=FAST)
    assert plain.status_code == 200, plain.text
    defaults = {
        "quality": "auto", "background": "opaque", "output_format": "png", "output_compression": 100,
        "stream": False, "partial_images": 0, "moderation": "low", "user": "u", "safety_identifier": "h",
        "style": None, "svg": None,
    }  # fmt: skip
    same = client.post("/v1/images/generations", json={**FAST, **defaults})
    assert same.status_code == 200, same.text
    assert same.json()["data"] == plain.json()["data"]


def test_edits_check_their_fields_too(client, picture):
    image = {"image": ("init.png", picture, "image/png")}
    form = {"prompt": "paint it", "model": TINY_SD15, "size": "64x64", "steps": "2", "seed": "3"}
    plain = client.post("/v1/images/edits", files=image, data=form)
    assert plain.status_code == 200, plain.text
    harmless = {"stream": "false", "quality": "auto", "input_fidelity": "low", "user": "u",
                "output_format": ""}  # fmt: skip
    same = client.post("/v1/images/edits", files=image, data={**form, **harmless})
    assert same.status_code == 200, same.text
    assert same.json()["data"] == plain.json()["data"]
    for field, value in (("input_fidelity", "high"), ("partial_images", "4"), ("output_format", "jpeg")):
        answer = client.post("/v1/images/edits", files=image, data={**form, field: value})
        assert refused(answer, field).startswith(f"invalid {field}=")
    assert refused(client.post("/v1/images/edits", files=image, data={**form, "svg[model]": "x"}), "svg")
    for field in ("style", "moderation", "denoise"):  # not edits' fields
        answer = client.post("/v1/images/edits", files=image, data={**form, field: "x"})
        assert refused(answer, field).startswith(f"unknown field {field!r}")
    markup = {**image, "markup": ("m.png", picture, "image/png")}
    assert refused(client.post("/v1/images/edits", files=markup, data=form), "markup")
    two = [("image[]", ("a.png", picture, "image/png")), ("image[]", ("b.png", picture, "image/png"))]
    assert "one image" in refused(client.post("/v1/images/edits", files=two, data=form), "image")
