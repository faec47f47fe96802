"""Upscaling over HTTP: A1111's extras and upscaler lists (also through the real webuiapi
client), and the native /api/v1/upscalers and /api/v1/upscale.

The routes are tested with the built-in upscalers (Lanczos, Nearest: against PIL's resize),
which need nothing more; model upscalers need spandrel (easel[upscalers]), whose torchvision
does not import beside CI's CPU torch, so their tests are skipped without it, and one test
checks what a model upscaler says without it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from server_support import server

from easel.testing.tiny_upscalers import spandrel_importable, write_tiny_upscaler
from easel.upscalers import Upscalers

needs_spandrel = pytest.mark.skipif(
    not spandrel_importable(),
    reason="model upscalers need spandrel (easel[upscalers]), whose torchvision does not import beside CI's "
    "CPU torch 2.13",
)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_b64(image: Image.Image, parameters: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def opened(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64.partition(",")[2] if b64.startswith("data:") else b64)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("upscalers")
    write_tiny_upscaler(folder / "tiny-x2.safetensors", 2)
    write_tiny_upscaler(folder / "tiny-x4.safetensors", 4, seed=1)
    write_tiny_upscaler(folder / "pickled.pth", 2)
    return folder


@pytest.fixture(scope="module")
def client(folder, tmp_path_factory):
    """An app whose engine reads `folder` (no diffusers model is loaded by these routes)."""
    from easel import Easel, Settings

    home = tmp_path_factory.mktemp("upscale-home")
    settings = Settings.from_env(home=home, upscaler_dir=folder, device="cpu", max_pixels=512 * 512)
    with server(
        home, Easel(settings), upscaler_dir=folder, device="cpu", max_pixels=512 * 512
    ) as test_client:
        yield test_client


def refused(answer, field: str) -> str:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == field, body
    return body["detail"]


def test_a1111_upscalers(client):
    """Model files are listed with or without spandrel (their scale is read with it)."""
    listed = client.get("/sdapi/v1/upscalers").json()
    assert [entry["name"] for entry in listed] == [
        "None",
        "Lanczos",
        "Nearest",
        "pickled",
        "tiny-x2",
        "tiny-x4",
    ]
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["tiny-x4"] == {
        "name": "tiny-x4", "model_name": "tiny-x4", "model_path": "tiny-x4.safetensors", "model_url": None,
        "scale": 4 if spandrel_importable() else None,
    }  # fmt: skip
    assert by_name["pickled"]["scale"] is None  # a pickle this server does not load
    assert by_name["Lanczos"] == {
        "name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4,
    }  # fmt: skip


def test_realesrgan_models_is_empty_without_model_files(tmp_path):
    from easel import Easel, Settings

    folder = tmp_path / "no-upscalers"
    settings = Settings.from_env(home=tmp_path / "home", upscaler_dir=folder, device="cpu")
    with server(tmp_path / "home", Easel(settings), upscaler_dir=folder, device="cpu") as empty:
        assert empty.get("/sdapi/v1/realesrgan-models").json() == []
        names = [entry["name"] for entry in empty.get("/sdapi/v1/upscalers").json()]
        assert names == ["None", "Lanczos", "Nearest"]


@needs_spandrel
def test_realesrgan_models(client):
    assert client.get("/sdapi/v1/realesrgan-models").json() == [
        {"name": "tiny-x2", "path": "tiny-x2.safetensors", "scale": 2},
        {"name": "tiny-x4", "path": "tiny-x4.safetensors", "scale": 4},
    ]


def test_extra_single_image_scales_and_keeps_the_text(client):
    image = picture(30, 20, seed=1)
    answer = client.post(
        "/sdapi/v1/extra-single-image",
        json={
            "image": png_b64(image, "a cat\nSteps: 3, Seed: 1"),
            "upscaler_1": "Nearest",
            "upscaling_resize": 2,
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Nearest</p>"
    out = opened(body["image"])
    # A1111's size: 2 x 30 = 60 rounded down to a multiple of 8 -> 56; 2 x 20 = 40
    expected = image.resize((56, 40), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(expected))
    assert out.text == {
        "parameters": "a cat\nSteps: 3, Seed: 1",
        "postprocessing": "Postprocess upscale by: 2, Postprocess upscaler: Nearest",
    }


@needs_spandrel
def test_extras_and_native_upscale_with_a_model(client, folder):
    image = picture(30, 20, seed=1)
    single = {"image": png_b64(image), "upscaler_1": "tiny-x2", "upscaling_resize": 2}
    answer = client.post("/sdapi/v1/extra-single-image", json=single)
    assert answer.status_code == 200, answer.text
    assert answer.json()["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: tiny-x2</p>"
    expected = Upscalers(folder).upscale(image, 56, 40, "tiny-x2")
    assert np.array_equal(np.asarray(opened(answer.json()["image"]).convert("RGB")), np.asarray(expected))
    batch = client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": [{"data": png_b64(image), "name": "0.png"}], "upscaler_1": "tiny-x4",
              "upscaling_resize": 4},
    )  # fmt: skip
    assert batch.status_code == 200, batch.text
    [out] = [opened(b64).convert("RGB") for b64 in batch.json()["images"]]
    assert np.array_equal(np.asarray(out), np.asarray(Upscalers(folder).upscale(image, 120, 80, "tiny-x4")))
    native = client.post("/api/v1/upscale", json={"image": png_b64(image), "scale": 2, "upscaler": "tiny-x2"})
    assert native.status_code == 200, native.text
    expected = Upscalers(folder).upscale(image, 60, 40, "tiny-x2")
    assert np.array_equal(np.asarray(opened(native.json()["image"]).convert("RGB")), np.asarray(expected))


def test_model_upscaler_without_spandrel_says_what_to_install(client):
    """Without spandrel a model upscaler is refused with what to install (422: the request is
    well formed, this install cannot serve it); the built-ins keep working."""
    if spandrel_importable():
        pytest.skip("spandrel is installed here")
    image = png_b64(picture(30, 20, seed=1))
    install = "pip install 'easel[upscalers]'"
    for upscalers in ({"upscaler_1": "tiny-x2"}, {"upscaler_1": "Lanczos", "upscaler_2": "tiny-x4",
                                                  "extras_upscaler_2_visibility": 0.5}):  # fmt: skip
        answer = client.post("/sdapi/v1/extra-single-image", json={"image": image, **upscalers})
        assert answer.status_code == 422, answer.text
        assert install in answer.json()["detail"], answer.json()
        batch = client.post(
            "/sdapi/v1/extra-batch-images", json={"imageList": [{"data": image, "name": "x"}], **upscalers}
        )
        assert batch.status_code == 422 and install in batch.json()["detail"], batch.text
    native = client.post("/api/v1/upscale", json={"image": image, "scale": 2, "upscaler": "tiny-x2"})
    assert native.status_code == 422, native.text
    assert native.json()["error"]["type"] == "UnsupportedFeature"
    assert install in native.json()["error"]["message"]
    assert client.post("/api/v1/upscale", json={"image": image, "scale": 2}).status_code == 200


def test_extra_single_image_resize_to_box_crop_and_second_upscaler(client):
    image = picture(40, 30, seed=2)
    body = {
        "image": png_b64(image), "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60,
        "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.25,
    }  # fmt: skip
    answer = client.post("/sdapi/v1/extra-single-image", json=body)
    assert answer.status_code == 200, answer.text
    # the larger ratio, 100/40 = 2.5: 100x75 (multiples of 8: 96x72), blended, pasted centred on 100x60
    first = image.resize((96, 72), Image.Resampling.LANCZOS)
    blended = Image.blend(first, image.resize((96, 72), Image.Resampling.NEAREST), 0.25)
    canvas = Image.new("RGB", (100, 60))
    canvas.paste(blended, box=(50 - 48, 30 - 36))
    assert np.array_equal(np.asarray(opened(answer.json()["image"]).convert("RGB")), np.asarray(canvas))
    assert answer.json()["html_info"] == (
        "<p>Postprocess upscale to: 100x60, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest, "
        "Postprocess crop to: 100x60</p>"
    )
    uncropped = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaling_crop": False})
    assert opened(uncropped.json()["image"]).size == (96, 72)


def test_upscaler_none_returns_the_picture_as_sent(client):
    image = picture(20, 12, seed=3)
    answer = client.post(
        "/sdapi/v1/extra-single-image", json={"image": png_b64(image), "upscaling_resize": 4}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["html_info"] == "<p></p>"
    assert np.array_equal(np.asarray(opened(answer.json()["image"]).convert("RGB")), np.asarray(image))


def test_extra_batch_images(client):
    images = [picture(16, 16, seed=4), picture(24, 16, seed=5)]
    answer = client.post(
        "/sdapi/v1/extra-batch-images",
        json={"imageList": [{"data": png_b64(im), "name": f"{i}.png"} for i, im in enumerate(images)],
              "upscaler_1": "Nearest", "upscaling_resize": 4},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    outs = [opened(b64).convert("RGB") for b64 in answer.json()["images"]]
    for image, out in zip(images, outs, strict=True):
        expected = image.resize((4 * image.width, 4 * image.height), Image.Resampling.NEAREST)
        assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert answer.json()["html_info"] == "<p>Postprocess upscale by: 4, Postprocess upscaler: Nearest</p>"


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"gfpgan_visibility": 0.5}, "gfpgan_visibility", "no face restoration"),
        ({"codeformer_visibility": 1}, "codeformer_visibility", "no face restoration"),
        ({"sharpen": True}, "sharpen", "unknown field 'sharpen'"),
        ({"upscaler_1": "nope"}, "upscaler_1", "invalid upscaler_1='nope': unknown upscaler"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "nope"}, "upscaler_2", "invalid upscaler_2='nope'"),
        ({"upscaler_1": "pickled"}, "upscaler_1", "pickled.pth is a pickle"),
        (
            {"upscaler_1": "Lanczos", "upscaling_resize": 8},
            "upscaling_resize",
            "more than this server's limit",
        ),
        ({"image": "not base64!"}, "image", "image"),
    ],
)
def test_extras_refusals_name_the_a1111_field(client, extra, field, message):
    body = {"image": png_b64(picture(80, 80)), **extra}
    assert message in refused(client.post("/sdapi/v1/extra-single-image", json=body), field)


def test_webuiapi_client_unchanged(client):
    import webuiapi

    api = webuiapi.WebUIApi(host="testserver", port=80)
    api.session = client  # the real client's calls, answered by the app
    assert [entry["name"] for entry in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    image = picture(32, 24, seed=6)
    result = api.extra_single_image(image=image, upscaler_1="Lanczos", upscaling_resize=2)
    expected = image.resize((64, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected))
    assert "Postprocess upscaler: Lanczos" in result.info
    batch = api.extra_batch_images(images=[image, image], upscaler_1="Nearest", upscaling_resize=2)
    assert [im.size for im in batch.images] == [(64, 48), (64, 48)]


def test_native_upscalers_and_upscale(client):
    assert client.get("/api/v1/upscalers").json() == [
        "None",
        "Lanczos",
        "Nearest",
        "pickled",
        "tiny-x2",
        "tiny-x4",
    ]
    image = picture(30, 20, seed=7)
    answer = client.post("/api/v1/upscale", json={"image": "data:image/png;base64," + png_b64(image, "a dog"),
                                                  "scale": 2, "upscaler": "Nearest"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (60, 40)
    assert body["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    out = opened(body["image"])
    assert out.text == {"parameters": "a dog", "postprocessing": body["postprocessing"]}
    expected = image.resize((60, 40), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(expected))
    sized = client.post("/api/v1/upscale", json={"image": png_b64(image), "width": 45, "height": 50})
    assert (sized.json()["width"], sized.json()["height"]) == (45, 50)


@pytest.mark.parametrize(
    ("extra", "field"),
    [({}, "scale"), ({"scale": 2, "width": 10}, "scale"), ({"scale": 2, "upscaler": "nope"}, "upscaler"),
     ({"scale": 2, "upscaler": "pickled"}, "upscaler"), ({"width": 4000, "height": 4000}, "width"),
     ({"scale": 2, "colour": "red"}, "colour")],
)  # fmt: skip
def test_native_upscale_refusals_name_the_field(client, extra, field):
    answer = client.post("/api/v1/upscale", json={"image": png_b64(picture(16, 16)), **extra})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field or field in json.dumps(error), error


def test_broken_and_unsupported_images_are_422_naming_the_field(client):
    buffer = io.BytesIO()
    picture(64, 64).save(buffer, format="PNG")
    truncated = base64.b64encode(buffer.getvalue()[: len(buffer.getvalue()) // 2]).decode("ascii")
    tiff = io.BytesIO()
    picture(8, 8).save(tiff, format="TIFF")
    tiff_b64 = base64.b64encode(tiff.getvalue()).decode("ascii")
    for data, expected in ((truncated, "not a readable image"), (tiff_b64, "unsupported image format TIFF")):
        single = client.post("/sdapi/v1/extra-single-image", json={"image": data, "upscaler_1": "Lanczos"})
        assert expected in refused(single, "image")
        batch_body = {"imageList": [{"data": data, "name": "x"}], "upscaler_1": "Lanczos"}
        batch = client.post("/sdapi/v1/extra-batch-images", json=batch_body)
        assert expected in refused(batch, "imageList[0].data")
        native = client.post("/api/v1/upscale", json={"image": data, "scale": 2})
        assert native.status_code == 422 and native.json()["error"]["field"] == "image"
        assert expected in native.json()["error"]["message"]
