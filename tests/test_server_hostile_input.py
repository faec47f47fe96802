"""Hostile input: every malformed field is a 4xx naming it; never a 500, a traceback, an
object repr or a server path, and never silently ignored."""

from __future__ import annotations

import base64
import http.client
import io
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import free_port, server

BAD_HUB_IDS = ("org/a..b", "org/name-", "org/" + "a" * 100, "org/name.git", "org/a--b")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto showpage\n%%EOF\n"


def encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_chunk(png: bytes, extra: bytes, *, before: bytes) -> bytes:
    at = png.index(before) - 4  # the chunk's length field comes first
    return png[:at] + extra + png[at:]


PICTURE = encoded(Image.new("RGB", (64, 64), (200, 30, 30)))
INFLATED = zlib.compress(b"a" * 5_000_000, 9)  # 5 MB of text in ~5 KB
TEXT_BOMBS = {
    "zTXt before IDAT": with_chunk(PICTURE, chunk(b"zTXt", b"parameters\0\0" + INFLATED), before=b"IDAT"),
    "iTXt after IDAT": with_chunk(
        PICTURE, chunk(b"iTXt", b"parameters\0\1\0\0\0" + INFLATED), before=b"IEND"
    ),
}


def message(answer) -> str:
    body = answer.json()
    error = body.get("error")
    if isinstance(error, dict):
        return error["message"]
    return body["detail"]


def field(answer) -> str | None:
    body = answer.json()
    error = body.get("error")
    if isinstance(error, dict):
        return error.get("field", error.get("param"))
    return body["field"]


def assert_clean(text: str) -> None:
    """No object repr, no path of the server."""
    assert " at 0x" not in text and "BytesIO" not in text, text
    for root in (os.environ["HF_HOME"], os.environ["EASEL_HOME"], str(Path.home()), sys.prefix):
        assert root not in text, text


# -- 1. LMS schedulers need scipy ------------------------------------------------------------


def test_lms_schedulers_generate_through_the_native_api(engine, tmp_path):
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8")
    assert '\n    "scipy>=' in pyproject  # diffusers' LMSDiscreteScheduler integrates with scipy
    with server(tmp_path, engine) as client:
        for name in ("LMS", "LMS Karras"):
            body = {"model": TINY_SD15, "prompt": "x", "steps": 2, "seed": 1, "scheduler": name}
            answer = client.post("/api/v1/generate", json=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "succeeded"


# -- 2. malformed hub ids ----------------------------------------------------------------------


def test_malformed_hub_ids_are_422_naming_the_field(engine, tmp_path):
    from easel.errors import InvalidRequest
    from easel.models.control import resolve_control

    with server(tmp_path, engine) as client:
        for bad in BAD_HUB_IDS:
            for answer, name in (
                (client.post("/api/v1/jobs", json={"prompt": "x", "model": bad}), "model"),
                (client.get("/api/v1/models/info", params={"model": bad}), "model"),
                (client.post("/api/v1/tokens", json={"prompt": "x", "model": bad}), "model"),
                (client.post("/v1/images/generations", json={"prompt": "x", "model": bad}), "model"),
                (client.post("/sdapi/v1/options", json={"sd_model_checkpoint": bad}), "sd_model_checkpoint"),
                (
                    client.post("/sdapi/v1/txt2img",
                                json={"prompt": "x", "override_settings": {"sd_model_checkpoint": bad}}),
                    "override_settings.sd_model_checkpoint",
                ),
                (client.post("/sdapi/v1/txt2img", json={"prompt": "x", "refiner_checkpoint": bad}),
                 "refiner_checkpoint"),
            ):  # fmt: skip
                assert answer.status_code == 422, (bad, answer.status_code, answer.text)
                assert field(answer) == name, (bad, answer.text)
                assert "repo id" in message(answer)
    # the Python API (and so the CLI) refuse them the same way, not with huggingface_hub's error
    for bad in BAD_HUB_IDS:
        with pytest.raises(InvalidRequest) as refused:
            engine.resolve_model(bad)
        assert refused.value.field == "model" and bad in str(refused.value)
        with pytest.raises(InvalidRequest) as refused:
            resolve_control(bad, field="controls[0].model", allow_pickle=False)
        assert refused.value.field == "controls[0].model"


def test_a1111_errors_about_the_model_name_the_field_the_client_sent(engine, tmp_path):
    with server(tmp_path, engine) as client:
        missing = "org/not-in-the-cache"
        body = {"prompt": "x", "steps": 1, "override_settings": {"sd_model_checkpoint": missing}}
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 404, answer.text
        assert answer.json()["field"] == "override_settings.sd_model_checkpoint"
        assert_clean(answer.text)


# -- 3. ControlNet units -----------------------------------------------------------------------


def test_a1111_controlnet_units_of_the_wrong_shape_are_422(engine, tmp_path):
    where = "alwayson_scripts.controlnet"
    with server(tmp_path, engine) as client:

        def txt2img(controlnet) -> object:
            body = {"prompt": "x", "steps": 1, "alwayson_scripts": {"controlnet": controlnet}}
            return client.post("/sdapi/v1/txt2img", json=body)

        for image in (5, {}, ["x"], True, {"image": 5}, 1.5):
            answer = txt2img({"args": [{"image": image, "model": "demo"}]})
            assert answer.status_code == 422, (image, answer.text)
            assert answer.json()["field"] == f"{where}.args[0].image", answer.text
        for args in ("notalist", {"image": "x"}, 5, True):
            answer = txt2img({"args": args})
            assert answer.status_code == 422, (args, answer.text)
            assert answer.json()["field"] == f"{where}.args", answer.text
        for unit in (5, "x", ["x"], None):
            answer = txt2img({"args": [{"enabled": False}, unit]})
            assert answer.status_code == 422, (unit, answer.text)
            assert answer.json()["field"] == f"{where}.args[1]", answer.text
        answer = txt2img("notadict")
        assert answer.status_code == 422 and answer.json()["field"] == where, answer.text


# -- 4 and 5. broken images, text-chunk bombs, formats ---------------------------------------


def image_routes(client, data: bytes) -> dict[str, object]:
    """Every route that reads an uploaded image, with `data` as that image."""
    text = b64(data)
    url = f"data:image/png;base64,{text}"
    unit = {"image": text, "model": "demo", "module": "none"}
    tiny = {"override_settings": {"sd_model_checkpoint": TINY_SD15}}
    return {
        "native control/preview": client.post("/api/v1/control/preview", json={"image": text}),
        "native png-info": client.post("/api/v1/png-info", json={"image": text}),
        "a1111 png-info": client.post("/sdapi/v1/png-info", json={"image": text}),
        "native init_image": client.post(
            "/api/v1/generate",
            json={"model": TINY_SD15, "prompt": "x", "steps": 2, "init_image": url},
        ),
        "a1111 init_images": client.post(
            "/sdapi/v1/img2img", json={"prompt": "x", "steps": 2, "init_images": [text], **tiny}
        ),
        "a1111 controlnet": client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "x", "steps": 1, "alwayson_scripts": {"controlnet": {"args": [unit]}}, **tiny},
        ),
        "openai edits": client.post(
            "/v1/images/edits", files={"image": ("x.png", data, "image/png")}, data={"prompt": "x"}
        ),
    }


FIELDS = {
    "native control/preview": "image", "native png-info": "image", "a1111 png-info": "image",
    "native init_image": "init_image", "a1111 init_images": "init_images",
    "a1111 controlnet": "alwayson_scripts.controlnet.args[0].image", "openai edits": "image",
}  # fmt: skip


def test_broken_images_and_text_chunk_bombs_are_422_naming_the_field(engine, tmp_path):
    truncated = encoded(Image.effect_noise((64, 64), 64).convert("RGB"))
    truncated = truncated[: len(truncated) // 2]
    cases = {"truncated PNG": (truncated, "not a readable image"),
             **{name: (data, "text chunk too large") for name, data in TEXT_BOMBS.items()}}  # fmt: skip
    with server(tmp_path, engine) as client:
        for case, (data, expected) in cases.items():
            for route, answer in image_routes(client, data).items():
                assert answer.status_code == 422, (case, route, answer.status_code, answer.text)
                assert field(answer) == FIELDS[route], (case, route, answer.text)
                assert expected in message(answer), (case, route, answer.text)
                assert_clean(answer.text)


def test_only_png_jpeg_webp_gif_and_bmp_are_read(engine, tmp_path):
    tiff = encoded(Image.new("RGB", (8, 8)), "TIFF")
    with server(tmp_path, engine) as client:
        for name, data in (("EPS", EPS), ("TIFF", tiff)):
            for route, answer in image_routes(client, data).items():
                assert answer.status_code == 422, (name, route, answer.status_code, answer.text)
                assert field(answer) == FIELDS[route], (name, route, answer.text)
                expected = f"unsupported image format {name}: send PNG, JPEG or WebP"
                assert expected in message(answer), answer.text
                assert_clean(answer.text)
        for kind in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
            data = encoded(Image.new("RGB", (16, 16), (10, 200, 10)), kind)
            answer = client.post("/api/v1/control/preview", json={"image": b64(data)})
            assert answer.status_code == 200, (kind, answer.text)
        answer = client.post("/api/v1/png-info", json={"image": b64(b"not an image at all")})
        assert answer.status_code == 422
        assert "not a readable image (PNG, JPEG or WebP)" in message(answer)
        assert_clean(answer.text)


def test_python_api_and_cli_refuse_unsupported_formats(tmp_path):
    from easel.errors import InvalidRequest
    from easel.storage.images import load_image
    from easel.storage.metadata import read_metadata

    eps = tmp_path / "picture.eps"
    eps.write_bytes(EPS)
    with pytest.raises(InvalidRequest) as refused:
        load_image(str(eps), field="init_image")
    assert refused.value.field == "init_image" and "unsupported image format EPS" in str(refused.value)
    with pytest.raises(InvalidRequest, match="unsupported image format EPS"):
        read_metadata(eps)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(TEXT_BOMBS["iTXt after IDAT"])
    with pytest.raises(InvalidRequest, match="text chunk too large"):
        read_metadata(bomb)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "easel", "info", str(eps)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unsupported image format EPS" in done.stderr and "Traceback" not in done.stderr


# -- 6. error bodies ---------------------------------------------------------------------------


FLAVOURS = (("/api/v1/jobs", "native"), ("/sdapi/v1/txt2img", "a1111"), ("/v1/images/generations", "openai"))


def test_body_errors_are_413_and_422_in_each_flavour(engine, tmp_path):
    json_type = {"content-type": "application/json"}
    with server(tmp_path, engine, max_upload_bytes=50_000) as client:
        for path, _ in FLAVOURS:
            # chunked (no Content-Length), over the limit: counted while read
            streamed = (b" " * 100_000 for _ in range(30))
            answer = client.post(path, content=streamed, headers=json_type)
            assert answer.status_code == 413, (path, answer.status_code, answer.text)
            assert field(answer) == "body" and answer.headers["x-should-retry"] == "false"
            # nested past Python's recursion limit
            deep = b"[" * 50_000 + b"]" * 50_000
            answer = client.post(path, content=deep, headers=json_type)
            assert answer.status_code == 422, (path, answer.status_code, answer.text)
            assert field(answer) == "body" and "nested" in message(answer)
            # not UTF-8
            answer = client.post(path, content=b'{"prompt": "\xff\xfe"}', headers=json_type)
            assert answer.status_code == 422, (path, answer.status_code, answer.text)
            assert field(answer) == "body" and "UTF-8" in message(answer)
        # a multipart upload streamed over the limit is a 413 too (not "unreadable form")
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
        parts = (part for part in [head, *(b"\0" * 100_000 for _ in range(30))])
        multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
        answer = client.post("/v1/images/edits", content=parts, headers=multipart)
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["param"] == "body"


def test_model_not_found_messages_carry_no_server_path(engine, tmp_path):
    with server(tmp_path, engine) as client:
        answer = client.get("/api/v1/models/info", params={"model": "org/not-in-the-cache"})
        assert answer.status_code == 404 and "not in the Hugging Face cache" in message(answer)
        assert_clean(answer.text)
        answer = client.post("/api/v1/generate", json={"prompt": "x", "model": "org/not-in-the-cache"})
        assert answer.status_code == 404, answer.text
        assert_clean(answer.text)
        jobs = client.get("/api/v1/jobs").text
        assert "not in the Hugging Face cache" in jobs
        assert_clean(jobs)


@pytest.fixture
def broken_route(monkeypatch):
    """GET /api/v1/models and /sdapi/v1/sd-models fail with an unexpected exception."""
    import easel.server.policy

    def fail() -> list:
        raise RuntimeError("boom at /srv/secret/place <object object at 0xdeadbeef>")

    monkeypatch.setattr(easel.server.policy, "list_models", fail)


def test_unexpected_exceptions_are_json_500s_that_close_the_connection(engine, tmp_path, broken_route):
    from fastapi.testclient import TestClient

    from easel import Settings
    from easel.server import create_app

    app = create_app(Settings.from_env(home=tmp_path), engine=engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, shape in (("/api/v1/models", "native"), ("/sdapi/v1/sd-models", "a1111")):
            answer = client.get(path)
            assert answer.status_code == 500, answer.text
            assert answer.headers["connection"] == "close"
            assert "boom" not in answer.text and "internal server error" in answer.text
            assert ("detail" in answer.json()) == (shape == "a1111")

    # on a real server: the 500 says Connection: close, the body is whole, then it closes
    import uvicorn

    port = free_port()
    real = uvicorn.Server(uvicorn.Config(create_app(Settings.from_env(home=tmp_path), engine=engine),
                                         host="127.0.0.1", port=port, log_level="critical"))  # fmt: skip
    thread = threading.Thread(target=real.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not real.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        assert connection.getresponse().read() == b'{"status":"ok"}'
        connection.request("GET", "/api/v1/models")  # the same kept-alive connection
        answer = connection.getresponse()
        assert answer.status == 500 and answer.getheader("connection") == "close"
        assert b"internal server error" in answer.read()
        assert answer.will_close
        connection.close()
    finally:
        real.should_exit = True
        thread.join(timeout=10)


# -- 7. HEAD /health ---------------------------------------------------------------------------


def test_head_health_is_200_without_a_body(engine, tmp_path):
    with server(tmp_path, engine, api_key="k3y") as client:
        answer = client.head("/health")
        assert answer.status_code == 200 and answer.content == b""
        assert client.get("/health").json() == {"status": "ok"}
