"""The three HTTP APIs in process (FastAPI TestClient): every endpoint and its errors."""

from __future__ import annotations

import base64
import io
import json

import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import b64, data_url, server, wait_for

FAST = {"model": TINY_SD15, "steps": 2}


@pytest.fixture(scope="module")
def client(hf_home, engine, tmp_path_factory):
    with server(tmp_path_factory.mktemp("server-home"), engine) as client:
        yield client


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["x-should-retry"] == "false"
    body = response.json()
    assert body  # one of the three shapes; each names the field when there is one
    if field is not None:
        named = (
            body.get("field")
            or (body.get("error") or {}).get("field")
            or (body.get("error") or {}).get("param")
        )
        assert named == field, body
    return body


# -- native -------------------------------------------------------------------------------------


def test_health_is_minimal(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_submit_returns_an_id_at_once_then_status_result_and_image_with_metadata(client):
    response = client.post(
        "/api/v1/jobs", json={**FAST, "prompt": "a red circle", "seed": 11, "num_images": 2}
    )
    assert response.status_code == 202
    job = response.json()
    assert len(job["id"]) == 32 and job["status"] in ("queued", "running", "succeeded")
    done = wait_for(
        lambda: (r := client.get(f"/api/v1/jobs/{job['id']}").json())["status"] == "succeeded" and r
    )
    assert done["progress"]["step"] == done["progress"]["total"] >= 2
    assert [image["seed"] for image in done["images"]] == [11, 12]
    assert done["result"]["request"]["width"] == 64 and done["result"]["effective_steps"] == 2

    image = client.get(done["images"][0]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert png(image.content).size == (64, 64)
    assert png(image.content).text["parameters"].startswith("a red circle\nSteps: 2")

    metadata = client.get(done["images"][0]["url"] + "/metadata").json()
    assert metadata["easel"]["seed"] == 11 and metadata["parsed"]["settings"]["Seed"] == "11"
    assert any(entry["id"] == job["id"] for entry in client.get("/api/v1/jobs").json())


def test_sync_generate_with_images_and_events_stream(client):
    response = client.post("/api/v1/generate?include_images=true", json={**FAST, "prompt": "sync", "seed": 3})
    assert response.status_code == 200
    record = response.json()
    assert record["status"] == "succeeded"
    assert png(base64.b64decode(record["images"][0]["b64_png"])).size == (64, 64)

    job = client.post("/api/v1/jobs", json={**FAST, "prompt": "stream", "steps": 3}).json()
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[-1] == "end" and set(names[:-1]) == {"progress"}
    assert json.loads(events[-1][1].removeprefix("data: "))["status"] == "succeeded"
    steps = [json.loads(lines[1].removeprefix("data: "))["step"] for lines in events[:-1]]
    assert steps == sorted(steps) and steps[-1] >= 3


def test_models_and_gallery_name_no_server_paths(client):
    titles = [model["title"] for model in client.get("/api/v1/models").json()]
    assert titles[0] == "easel-demo" and TINY_SD15 in titles
    client.post("/api/v1/generate", json={**FAST, "prompt": "a findable zebra", "seed": 1})
    entries = client.get("/api/v1/gallery", params={"search": "zebra"}).json()
    assert entries and entries[0]["prompt"] == "a findable zebra" and "path" not in entries[0]
    assert client.get(entries[0]["url"]).status_code == 200
    home = str(client.app.state.easel.settings.home)
    for url in ("/api/v1/gallery", "/api/v1/jobs", "/api/v1/models", "/sdapi/v1/options", "/openapi.json"):
        assert home not in client.get(url).text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "width": 13}, "width"),
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"steps": 2}, "prompt"),
        ({"prompt": "x", "steps": "many"}, "steps"),
        ({"prompt": "x", "scheduler": "Nope"}, "scheduler"),
        ({"prompt": "x", "model": "/etc"}, "model"),
        ({"prompt": "x", "model": "../models/x.safetensors"}, "model"),
        ({"prompt": "x", "init_image": "/etc/passwd"}, "init_image"),
        ({"prompt": "x", "init_image": "http://127.0.0.1:9/x.png"}, "init_image"),
        ({"prompt": "x", "init_image": "data:image/png;base64,bm90IGFuIGltYWdl"}, "init_image"),
        ({"prompt": "x", "steps": 151}, "steps"),
        ({"prompt": "x", "num_images": 9}, "num_images"),
        ({"prompt": "x", "width": 4096, "height": 4096}, "width"),
        ({"prompt": "x", "refiner_at": 0.5}, "refiner_at"),
    ],
)
def test_native_validation_errors_are_4xx_naming_the_field(client, body, field):
    assert_error(client.post("/api/v1/jobs", json=body), 422, field)


def test_native_not_found_conflict_and_bad_json(client):
    assert_error(client.get("/api/v1/jobs/" + "0" * 32), 404)
    assert_error(client.get("/api/v1/images/" + "0" * 32), 404)
    assert_error(client.post("/api/v1/jobs/" + "0" * 32 + "/cancel"), 404)
    bad = client.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(bad, 422, "body")
    done = client.post("/api/v1/generate", json={**FAST, "prompt": "finished", "seed": 2}).json()
    assert_error(client.post(f"/api/v1/jobs/{done['id']}/cancel"), 409)


def test_engine_errors_of_a_job_come_back_mapped(client):
    missing = client.post(
        "/api/v1/generate", json={"prompt": "x", "model": "nobody/no-such-model", "steps": 1}
    )
    assert_error(missing, 404)
    record = client.get("/api/v1/jobs").json()[0]
    assert record["status"] == "failed" and record["error"]["type"] == "ModelNotFound"


# -- AUTOMATIC1111 --------------------------------------------------------------------------------


def test_a1111_txt2img_answers_like_a1111(client):
    body = {
        "prompt": "a blue square",
        "negative_prompt": "red",
        "steps": 2,
        "cfg_scale": 6,
        "seed": 21,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler a",
        "batch_size": 2,
        "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": TINY_SD15},
        "restore_faces": False,
        "tiling": False,
        "enable_hr": False,
        "styles": [],
        "eta": 1,  # Euler a's own (fields A1111 lacks, or values easel would ignore: test_a1111_fields)
    }
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [21, 22] and info["seed"] == 21
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 6 and info["steps"] == 2
    assert (info["width"], info["height"]) == (64, 64) and info["sd_model_name"] == "stable-diffusion-v1-5"
    assert answer["parameters"]["prompt"] == "a blue square"
    images = [png(base64.b64decode(data)) for data in answer["images"]]
    assert len(images) == 2
    assert [image.text["parameters"] for image in images] == info["infotexts"]
    assert info["infotexts"][0].startswith("a blue square\nNegative prompt: red\nSteps: 2, Sampler: Euler a")


def test_a1111_seed_minus_one_is_random_and_recorded(client):
    answer = client.post(
        "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "seed": -1, "width": 64, "height": 64}
    )
    info = json.loads(answer.json()["info"])
    assert info["seed"] >= 0 and f"Seed: {info['seed']}," in info["infotexts"][0]


def test_a1111_img2img_with_data_url_or_bare_base64(client, init_png):
    for image in (data_url(init_png), b64(init_png)):
        body = {
            "prompt": "paint",
            "init_images": [image],
            "denoising_strength": 0.5,
            "steps": 4,
            "seed": 5,
            "override_settings": {"sd_model_checkpoint": TINY_SD15},
            "include_init_images": False,
        }
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in info["infotexts"][0]
        assert response.json()["parameters"]["init_images"] is None  # not echoed back
    first = client.post("/sdapi/v1/img2img", json=body).json()["images"][0]
    assert first == response.json()["images"][0]  # same request, same bytes


def test_a1111_models_options_samplers_progress_interrupt_scripts(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert {"title", "model_name", "hash", "sha256", "filename"} <= set(models[0])
    assert TINY_SD15 in [model["title"] for model in models]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "easel-demo"
    try:
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": TINY_SD15}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == TINY_SD15
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "seed": 1}).json()
        assert json.loads(answer["info"])["sd_model_name"] == "stable-diffusion-v1-5"
        assert_error(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nobody/nothing"}), 404)
        assert_error(
            client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "/etc"}), 422, "sd_model_checkpoint"
        )
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == TINY_SD15
    finally:
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "easel-demo"})
    samplers = [sampler["name"] for sampler in client.get("/sdapi/v1/samplers").json()]
    assert "Euler a" in samplers and "DPM++ 2M" in samplers  # A1111 >= 1.9: schedule types apart
    schedule_types = [s["name"] for s in client.get("/sdapi/v1/schedulers").json()]
    assert schedule_types[:3] == ["automatic", "uniform", "karras"]
    assert "polyexponential" not in schedule_types  # refused by name, so not listed
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert "canny" in client.get("/controlnet/module_list").json()["module_list"]
    assert client.get("/controlnet/model_list").json()["model_list"][0] == "demo"


def test_a1111_karras_schedule_type_selects_the_karras_sampler(client):
    body = {
        "prompt": "x",
        "steps": 2,
        "seed": 1,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "override_settings": {"sd_model_checkpoint": TINY_SD15},
    }
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sampler_name"] == "DPM++ 2M Karras"
    assert_error(
        client.post("/sdapi/v1/txt2img", json={**body, "scheduler": "Polyexponential"}), 422, "scheduler"
    )


def test_a1111_png_info_reads_the_parameters(client):
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "info please", "steps": 1, "seed": 9}).json()
    read = client.post(
        "/sdapi/v1/png-info", json={"image": "data:image/png;base64," + answer["images"][0]}
    ).json()
    assert read["info"] == json.loads(answer["info"])["infotexts"][0]
    assert read["parameters"]["Prompt"] == "info please" and read["parameters"]["Seed"] == "9"
    assert_error(client.post("/sdapi/v1/png-info", json={"image": "bm9wZQ=="}), 422, "image")


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("txt2img", {"prompt": "x", "cfg_scale": 500}, 422, "cfg_scale"),
        ("txt2img", {"prompt": "x", "sampler_name": "Nope"}, 422, "sampler_name"),
        ("txt2img", {"prompt": "x", "steps": "abc"}, 422, "steps"),
        ("txt2img", {"prompt": "x", "width": 65}, 422, "width"),
        ("txt2img", {"prompt": "x", "batch_size": 0}, 422, "batch_size"),
        ("txt2img", {"prompt": "x", "batch_size": 3, "n_iter": 3}, 422, "batch_size"),
        (
            "txt2img",
            {"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [{"module": "canny"}]}}},
            422,
            "alwayson_scripts.controlnet.args[0].image",
        ),
        ("img2img", {"prompt": "x"}, 422, "init_images"),
        ("img2img", {"prompt": "x", "init_images": ["%%%"]}, 422, "init_images"),
        ("img2img", {"prompt": "x", "init_images": ["http://127.0.0.1:9/a.png"]}, 422, "init_images"),
    ],
)
def test_a1111_errors_name_a1111_fields(client, path, body, status, field):
    answer = assert_error(client.post(f"/sdapi/v1/{path}", json=body), status, field)
    assert {"error", "detail"} <= set(answer)


def test_a1111_controlnet_units_steer_the_generation(client, init_png):
    """sd-webui-controlnet units -> controls; the bundled demo model with its demo ControlNet."""
    unit = {
        "image": b64(init_png),
        "module": "canny",
        "model": "demo",
        "weight": 0.8,
        "threshold_a": 50,
        "threshold_b": 150,
        "guidance_end": 0.9,
        "resize_mode": "Crop and Resize",
        "pixel_perfect": False,
    }
    body = {
        "prompt": "x",
        "steps": 2,
        "seed": 1,
        "width": 64,
        "height": 64,
        "override_settings": {"sd_model_checkpoint": "easel-demo"},
    }
    steered = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": [unit]}}}
    )
    assert steered.status_code == 200, steered.text
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert "ControlNet 0:" in infotext and "Module: canny" in infotext and "Weight: 0.8" in infotext
    assert "Threshold A: 50" in infotext
    job = client.get("/api/v1/jobs").json()[0]  # the record summarises the control image, no data echoed
    assert job["request"]["controls"][0]["image"].startswith("(uploaded image")
    plain = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert plain.status_code == 200 and "ControlNet" not in json.loads(plain.json()["info"])["infotexts"][0]
    disabled = {**unit, "enabled": False}
    off = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [disabled]}}}
    )
    assert off.json()["images"] == plain.json()["images"]

    def refused(bad_unit: dict, field: str) -> dict:
        scripts = {"controlnet": {"args": [disabled, bad_unit]}}  # the disabled unit still counts
        return assert_error(
            client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": scripts}), 422, field
        )

    refused({**unit, "model": "None"}, "alwayson_scripts.controlnet.args[1].model")
    refused({**unit, "weight": 5}, "alwayson_scripts.controlnet.args[1].weight")
    refused({**unit, "module": "no_such_module"}, "alwayson_scripts.controlnet.args[1].module")
    refused({**unit, "model": "/etc/control.safetensors"}, "alwayson_scripts.controlnet.args[1].model")
    refused({**unit, "image": "%%%"}, "alwayson_scripts.controlnet.args[1].image")


def test_native_controls_take_no_paths_or_urls(client):
    for image in ("/etc/passwd", "http://127.0.0.1:9/x.png"):
        body = {"prompt": "x", "controls": [{"model": "demo", "image": image}]}
        assert_error(client.post("/api/v1/jobs", json=body), 422, "controls[0].image")
    body = {"prompt": "x", "controls": [{"model": "../x", "image": "data:image/png;base64,AAAA"}]}
    assert_error(client.post("/api/v1/jobs", json=body), 422)


def test_a1111_mask_errors_name_the_a1111_field(client, init_png, tmp_path):
    from PIL import Image

    Image.new("L", (64, 64), 255).save(white := tmp_path / "white.png")
    inverted = {"init_images": [b64(init_png)], "mask": b64(white), "inpainting_mask_invert": 1}
    error = assert_error(client.post("/sdapi/v1/img2img", json={"prompt": "x", **inverted}), 422)
    assert error["field"] == "mask" and "nothing to repaint" in error["detail"]  # white, inverted: all black


# -- OpenAI ---------------------------------------------------------------------------------------


def test_openai_generations_b64_with_seed_equal_to_native(client):
    body = {
        "prompt": "a green triangle",
        "n": 2,
        "size": "64x64",
        "response_format": "b64_json",
        "model": TINY_SD15,
        "seed": 77,
        "steps": 2,
        "quality": "auto",  # the values that change nothing (others: tests/test_openai_fields.py)
        "output_format": "png",
        "user": "u",
    }
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["created"], int) and len(answer["data"]) == 2
    native = client.post(
        "/api/v1/generate?include_images=true",
        json={
            "prompt": "a green triangle",
            "model": TINY_SD15,
            "seed": 77,
            "steps": 2,
            "num_images": 2,
            "width": 64,
            "height": 64,
            "prompt_syntax": "plain",  # what the OpenAI door means by a prompt
        },
    ).json()
    assert [item["b64_json"] for item in answer["data"]] == [image["b64_png"] for image in native["images"]]


def test_openai_url_format_and_openai_model_names_mean_the_current_model(client):
    answer = client.post(
        "/v1/images/generations",
        json={"prompt": "x", "model": "dall-e-3", "response_format": "url", "steps": 1, "seed": 4},
    ).json()
    url = answer["data"][0]["url"]
    assert url.startswith("http://testserver/api/v1/images/")
    assert client.get(url).status_code == 200


def test_openai_edits_multipart_is_image_to_image(client, init_png):
    files = {"image": ("init.png", init_png.read_bytes(), "image/png")}
    data = {
        "prompt": "paint it",
        "n": "1",
        "size": "64x64",
        "response_format": "b64_json",
        "model": TINY_SD15,
        "seed": "8",
        "steps": "4",
        "strength": "0.5",
    }
    response = client.post("/v1/images/edits", files=files, data=data)
    assert response.status_code == 200, response.text
    image = png(base64.b64decode(response.json()["data"][0]["b64_json"]))
    assert "Denoising strength: 0.5" in image.text["parameters"] and "Seed: 8" in image.text["parameters"]
    # image[] (the array form newer clients send) works too
    again = client.post("/v1/images/edits", files={"image[]": files["image"]}, data=data)
    assert again.json()["data"][0]["b64_json"] == response.json()["data"][0]["b64_json"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "65x64"}, "size"),
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"n": 1}, "prompt"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "model": "/etc"}, "model"),
    ],
)
def test_openai_errors_have_the_openai_shape(client, body, param):
    answer = assert_error(client.post("/v1/images/generations", json=body), 422, param)
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"


def test_openai_edit_errors(client, init_png):
    image = {"image": ("init.png", init_png.read_bytes(), "image/png")}
    assert_error(client.post("/v1/images/edits", data={"prompt": "x"}), 422, "image")
    assert_error(client.post("/v1/images/edits", files=image, data={}), 422, "prompt")
    masked = client.post("/v1/images/edits", files={**image, "mask": image["image"]}, data={"prompt": "x"})
    refused = assert_error(masked, 422)["error"]  # an opaque picture as mask: nothing marked to edit
    assert refused["param"] == "mask" and "no fully transparent pixels" in refused["message"]
    not_image = {"image": ("x.png", b"not an image", "image/png")}
    assert_error(client.post("/v1/images/edits", files=not_image, data={"prompt": "x"}), 422, "image")


def test_unknown_route_and_method_are_plain_4xx(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/sdapi/v1/txt2img"), 405)
