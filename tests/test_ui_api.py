"""In-process tests of what the web UI needs from the server: the page itself (behind the key)
and the native routes that serve forms (tokens, model info, control preview, PNG info, delete,
queue position in the event stream)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image, PngImagePlugin
from server_support import data_url, server


@pytest.fixture(scope="module")
def client(engine, sdxl_models, kandinsky_models, tmp_path_factory):
    with server(tmp_path_factory.mktemp("ui-api-home"), engine) as client:
        yield client


def png_data_url(image: Image.Image, text: dict[str, str] | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_page_and_assets_are_served_with_stable_ids(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    ids = ("prompt", "generate", "cancel", "results", "gallery-grid", "pnginfo-drop", "control-add",
           "refiner-fields", "prior-fields", "mask-canvas", "inpaint-options", "outpaint-fields",
           "loras", "lora-rows", "lora-select", "lora-add", "lora-insert", "lora-empty",
           "clip-skip", "error-top", "results-placeholder")  # fmt: skip
    for element_id in ids:
        assert f'id="{element_id}"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/app.css").status_code == 200
    missing = client.get("/ui/../pyproject.toml")
    assert missing.status_code == 404
    assert client.get("/ui/secret.py").json()["error"]["type"] == "HTTPError"
    for icon in ("/favicon.ico", "/ui/favicon.svg"):  # no 404 in every browser's first request
        answer = client.get(icon)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml", icon
    # the picker starts at the server's current model (here the bundled one), not the first listed
    models = client.get("/api/v1/models").json()
    assert [model["title"] for model in models if model["default"]] == ["easel-demo"]


def test_page_needs_the_key_like_every_route(engine, tmp_path):
    with server(tmp_path, engine, api_key="ui-key") as keyed:
        refused = keyed.get("/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert keyed.get("/ui/app.js").status_code == 401
        basic = "Basic " + base64.b64encode(b"me:ui-key").decode("ascii")
        assert keyed.get("/", headers={"Authorization": basic}).status_code == 200
        assert keyed.post("/api/v1/tokens", json={"prompt": "x"}).status_code == 401


def test_token_counts_per_chunk(client):
    short = client.post("/api/v1/tokens", json={"prompt": "a red circle", "model": TINY_SD15})
    assert short.status_code == 200
    assert short.json()["chunks"] == 1 and short.json()["text"].endswith("/75, 1 chunk")
    long = client.post("/api/v1/tokens", json={"prompt": "red circle, " * 40, "model": TINY_SD15}).json()
    assert long["chunks"] == 2 and long["text"] == f"{long['tokens']}/150, 2 chunks"
    bad = client.post("/api/v1/tokens", json={"prompt": "x", "prompt_syntax": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "prompt_syntax"
    path = client.post("/api/v1/tokens", json={"prompt": "x", "model": "/etc/models"})
    assert path.status_code == 422 and path.json()["error"]["field"] == "model"


def test_model_info_names_family_fields(client):
    sd15 = client.get("/api/v1/models/info", params={"model": TINY_SD15}).json()
    assert sd15["family"] == "sd15" and sd15["options"] == [] and sd15["controlnet"] is True
    assert sd15["defaults"]["steps"] > 0 and "img2img" in sd15["tasks"]
    sdxl = client.get("/api/v1/models/info", params={"model": TINY_SDXL}).json()
    assert "refiner" in sdxl["options"] and "prior" not in sdxl["options"]
    refiner = client.get("/api/v1/models/info", params={"model": TINY_SDXL_REFINER}).json()
    assert refiner["tasks"] == ["img2img", "inpaint"]
    kandinsky = client.get("/api/v1/models/info", params={"model": TINY_KANDINSKY}).json()
    assert "prior" in kandinsky["options"] and "refiner" not in kandinsky["options"]
    assert kandinsky["controlnet"] is False and kandinsky["loras"] is False
    assert sd15["loras"] is sdxl["loras"] is True and refiner["loras"] is False
    demo = client.get("/api/v1/models/info", params={"model": "easel-demo"}).json()
    assert demo["family"] == "sd15"
    missing = client.get("/api/v1/models/info", params={"model": "nobody/nothing"})
    assert missing.status_code == 404
    assert "Euler a" in client.get("/api/v1/schedulers").json()
    control = client.get("/api/v1/control").json()
    assert "demo" in control["models"] and "canny" in control["preprocessors"]
    assert control["modes"][:3] == ["canny", "tile", "depth"]  # a union ControlNet's control types, in order


def test_control_preview_is_the_preprocessor_output(client, init_png):
    from easel.control.preprocessors import canny

    image = data_url(init_png)
    answer = client.post("/api/v1/control/preview", json={"image": image, "preprocessor": "canny"})
    assert answer.status_code == 200
    preview = Image.open(io.BytesIO(base64.b64decode(answer.json()["image"].partition(",")[2])))
    assert preview.tobytes() == canny(Image.open(init_png).convert("RGB"), 100, 200).tobytes()
    detector = client.post("/api/v1/control/preview", json={"image": image, "preprocessor": "openpose"})
    assert detector.status_code == 422 and "preview is not available" in detector.json()["error"]["message"]
    unknown = client.post("/api/v1/control/preview", json={"image": image, "preprocessor": "x"})
    assert unknown.json()["error"]["field"] == "preprocessor"
    not_image = client.post("/api/v1/control/preview", json={"image": "data:image/png;base64,aGVsbG8="})
    assert not_image.status_code == 422 and not_image.json()["error"]["field"] == "image"


def test_png_info_reads_easel_and_other_tools_images_as_request_fields(client):
    job = client.post(
        "/api/v1/generate",
        json={"model": TINY_SD15, "prompt": "a blue square", "seed": 11, "steps": 2, "width": 64,
              "height": 64, "num_images": 2, "scheduler": "Euler a"},
    ).json()  # fmt: skip
    second = client.get(job["images"][1]["url"]).content
    info = client.post("/api/v1/png-info", json={"image": base64.b64encode(second).decode("ascii")}).json()
    assert info["request"]["seed"] == 12 and info["request"]["num_images"] == 1
    assert info["request"]["prompt"] == "a blue square" and info["request"]["model"] == TINY_SD15
    assert info["parameters"].startswith("a blue square\nSteps: 2")

    other = (
        "a (cat:1.2)\nNegative prompt: dog\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 6.5, Seed: 1234, Size: 512x768, Model: stable-diffusion-v1-5, Hires upscale: 2"
    )
    foreign = png_data_url(Image.new("RGB", (16, 16)), {"parameters": other})
    fields = client.post("/api/v1/png-info", json={"image": foreign}).json()["request"]
    assert fields == {
        "prompt": "a (cat:1.2)", "negative_prompt": "dog", "steps": 30, "guidance_scale": 6.5, "seed": 1234,
        "width": 512, "height": 768, "scheduler": "DPM++ 2M Karras", "model": "stable-diffusion-v1-5",
        "prompt_syntax": "a1111",
    }  # fmt: skip
    bare = client.post("/api/v1/png-info", json={"image": png_data_url(Image.new("RGB", (8, 8)))}).json()
    assert bare["parameters"] is None and bare["request"] == {}

    image_id = job["images"][0]["id"]
    assert client.delete(f"/api/v1/images/{image_id}").json() == {"deleted": image_id}
    assert client.get(f"/api/v1/images/{image_id}").status_code == 404
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 404


def test_event_stream_reports_queue_position(client):
    slow = {"model": TINY_SD15, "prompt": "x", "steps": 60, "width": 64, "height": 64, "seed": 1}
    first = client.post("/api/v1/jobs", json=slow).json()
    second = client.post("/api/v1/jobs", json={**slow, "steps": 1}).json()
    with client.stream("GET", f"/api/v1/jobs/{second['id']}/events") as stream:
        head = next(stream.iter_text())
    progress = json.loads(head.split("\n")[1].removeprefix("data: "))
    client.post(f"/api/v1/jobs/{first['id']}/cancel")
    assert progress["status"] == "queued" and progress["position"] in (1, 2)
