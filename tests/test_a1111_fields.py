"""Every A1111 field is honoured, or refused with a 422 naming it, never accepted and ignored;
webuiapi's default bodies pass unchanged."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from conftest import TINY_KANDINSKY, TINY_SD15
from PIL import Image
from server_support import server

from easel import GenerationRequest

MODEL = {"sd_model_checkpoint": TINY_SD15}
CLIP = "override_settings.CLIP_stop_at_last_layers"
SMALL = {
    "prompt": "a red circle",
    "steps": 2,
    "seed": 5,
    "width": 64,
    "height": 64,
    "override_settings": MODEL,
}


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


PICTURE = Image.new("RGB", (64, 64), (200, 30, 30))
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))


def webuiapi_payloads() -> dict[str, dict]:
    """The bodies webuiapi posts (its defaults untouched), captured instead of sent."""
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=1, username="u", password="p")  # auth: no probing
    sent: dict[str, dict] = {}

    def capture(url, payload, use_async=False):
        name = url.rsplit("/", 1)[-1]
        sent[name + ("-mask" if "mask" in payload else "")] = json.loads(json.dumps(payload))

    api.post_and_get_api_result = capture
    api.txt2img(prompt="a red circle", seed=5, steps=2, width=64, height=64, override_settings=dict(MODEL))
    api.img2img(images=[PICTURE], prompt="a red circle", seed=5, steps=2, width=64, height=64,
                override_settings=dict(MODEL))  # fmt: skip
    api.img2img(images=[PICTURE], mask_image=MASK, prompt="a red circle", seed=5, steps=2, width=64,
                height=64, override_settings=dict(MODEL))  # fmt: skip
    return sent


@pytest.fixture(scope="module")
def client(engine, hf_home, tmp_path_factory):
    with server(tmp_path_factory.mktemp("a1111-fields"), engine) as test_client:
        yield test_client


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def refused(answer, field: str) -> str:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["field"] == field, body
    return body["detail"]


def test_webuiapi_default_bodies_are_accepted_and_honoured(client):
    payloads = webuiapi_payloads()
    assert set(payloads) == {"txt2img", "img2img", "img2img-mask"}
    for name, payload in payloads.items():
        route = name.removesuffix("-mask")
        answer = client.post(f"/sdapi/v1/{route}", json=payload)
        assert answer.status_code == 200, (name, answer.text)
        body = answer.json()
        assert len(body["images"]) == 1
        assert body["parameters"].get("init_images") is None  # include_init_images defaults to false
    # its default txt2img body makes exactly the image of the minimal body
    minimal = client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler a", "cfg_scale": 7}
    ).json()
    again = client.post("/sdapi/v1/txt2img", json=payloads["txt2img"]).json()
    np.testing.assert_array_equal(pixels(again["images"][0]), pixels(minimal["images"][0]))


REFUSED_TXT2IMG = [
    ({"firstphase_width": 32}, "firstphase_width"),
    ({"firstpass_image": "abc"}, "firstpass_image"),
    ({"restore_faces": True}, "restore_faces"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"script_name": "x/y/z plot"}, "script_name"),
    ({"seed_resize_from_h": 128}, "seed_resize_from_h"),
    ({"seed_resize_from_w": 128}, "seed_resize_from_w"),
    ({"s_churn": 0.5}, "s_churn"),
    ({"s_noise": 0.9}, "s_noise"),
    ({"s_min_uncond": 0.2}, "s_min_uncond"),
    ({"disable_extra_networks": True}, "disable_extra_networks"),
    ({"infotext": "Steps: 20"}, "infotext"),
    ({"refiner_switch_at": 0.8}, "refiner_switch_at"),
    ({"refiner_checkpoint": "None", "refiner_switch_at": 0.8}, "refiner_switch_at"),
    ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
    ({"sampler_name": "DDIM", "eta": 1.5}, "eta"),  # DDIM's eta is honoured, from 0 to 1
    ({"eta": 1.0}, "eta"),  # no sampler named: easel cannot tell what eta would do
    ({"cfg": 7}, "cfg"),  # A1111 has no such field
    ({"send_image": False}, "send_image"),
    ({"resize_mode": 1}, "resize_mode"),  # an img2img field
    ({"override_settings": {**MODEL, "eta_noise_seed_delta": 1}}, "override_settings.eta_noise_seed_delta"),
    ({"override_settings": {**MODEL, "randn_source": "CPU"}}, "override_settings.randn_source"),
    ({"override_settings": {**MODEL, "CLIP_stop_at_last_layers": 0}}, CLIP),
    ({"override_settings": {**MODEL, "CLIP_stop_at_last_layers": "2"}}, CLIP),
    ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}}},
     "alwayson_scripts.ADetailer"),
    ({"alwayson_scripts": {"Refiner": {}}}, "alwayson_scripts.Refiner"),
    ({"sampler_index": "No Such Sampler"}, "sampler_index"),
    ({"sampler_name": "No Such Sampler", "sampler_index": "Euler"}, "sampler_name"),
    ({"enable_hr": "yes"}, "enable_hr"),  # the JSON type too
]  # fmt: skip


@pytest.mark.parametrize(("fields", "field"), REFUSED_TXT2IMG, ids=[f for _, f in REFUSED_TXT2IMG])
def test_txt2img_refuses_what_it_would_ignore(client, fields, field):
    detail = refused(client.post("/sdapi/v1/txt2img", json={**SMALL, **fields}), field)
    assert field.rsplit(".", 1)[-1] in detail


REFUSED_IMG2IMG = [
    ({"resize_mode": 2}, "resize_mode"),
    ({"initial_noise_multiplier": 0.9}, "initial_noise_multiplier"),
    ({"latent_mask": "abc"}, "latent_mask"),
    ({"mask": b64_png(MASK), "mask_round": False}, "mask_round"),
    ({"init_images": [b64_png(PICTURE), b64_png(PICTURE)]}, "init_images"),
    ({"enable_hr": True}, "enable_hr"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "field"), REFUSED_IMG2IMG, ids=[f for _, f in REFUSED_IMG2IMG])
def test_img2img_refuses_what_it_would_ignore(client, fields, field):
    body = {**SMALL, "init_images": [b64_png(PICTURE)], **fields}
    refused(client.post("/sdapi/v1/img2img", json=body), field)


def test_values_that_cannot_change_the_image_are_accepted(client):
    """A1111's defaults and values it would not use give exactly the image without them."""
    plain = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler a"}).json()
    ignorable = {
        "sampler_name": "Euler a", "sampler_index": "DDIM",  # sampler_name wins, as in A1111
        "eta": 1, "s_tmin": 0.5, "s_tmax": 10, "s_churn": 0, "s_noise": 1, "subseed": 1234,
        "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": 0,
        "denoising_strength": 0.35,  # txt2img without hires fix: unused, as in A1111
        "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,  # defaults
        "hr_resize_x": 0, "hr_sampler_name": "Use same sampler", "hr_prompt": "",
        "hr_checkpoint_name": "Use same checkpoint",
        "styles": [], "script_name": "", "script_args": [1, 2], "tiling": False, "restore_faces": False,
        "do_not_save_samples": True, "do_not_save_grid": True, "comments": {"note": 1}, "force_task_id": "t1",
        "alwayson_scripts": {"ADetailer": {"args": [False]}, "animatediff": {"args": []}},
        "override_settings": {**MODEL, "samples_format": "png", "eta_noise_seed_delta": 0,
                              "eta_ancestral": 1.0, "CLIP_stop_at_last_layers": 1},
    }  # fmt: skip
    answer = client.post("/sdapi/v1/txt2img", json={**SMALL, **ignorable})
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(pixels(answer.json()["images"][0]), pixels(plain["images"][0]))
    for sampler, eta in (("Euler", 0.3), ("DDIM", 0), ("DPM++ 2M Karras", 0.7)):  # eta that changes nothing
        done = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": sampler, "eta": eta})
        assert done.status_code == 200, (sampler, done.text)
    img2img = {**SMALL, "init_images": [b64_png(PICTURE)], "image_cfg_scale": 1.5, "mask_round": False,
               "resize_mode": 0, "initial_noise_multiplier": 1.0, "include_init_images": True}  # fmt: skip
    edited = client.post("/sdapi/v1/img2img", json=img2img)
    assert edited.status_code == 200, edited.text
    assert edited.json()["parameters"]["init_images"] == img2img["init_images"]  # include_init_images


def test_send_images_and_save_images(client):
    before = {item["id"] for item in client.get("/api/v1/gallery", params={"limit": 500}).json()}

    def new_ids() -> set[str]:
        return {item["id"] for item in client.get("/api/v1/gallery", params={"limit": 500}).json()} - before

    silent = client.post("/sdapi/v1/txt2img", json={**SMALL, "send_images": False, "save_images": True})
    assert silent.status_code == 200, silent.text
    body = silent.json()
    assert body["images"] == [] and json.loads(body["info"])["all_seeds"] == [5]
    kept = new_ids()
    assert len(kept) == 1  # save_images: the gallery keeps it
    unsaved = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 6})  # save_images defaults to false
    assert unsaved.status_code == 200 and len(unsaved.json()["images"]) == 1
    assert new_ids() == kept  # A1111 saves nothing without save_images; neither does the gallery


def test_clip_skip_from_override_settings_and_options(client, engine):
    with_skip = {**SMALL, "override_settings": {**MODEL, "CLIP_stop_at_last_layers": 2}}
    skipped = client.post("/sdapi/v1/txt2img", json=with_skip)
    assert skipped.status_code == 200, skipped.text
    body = skipped.json()
    info = json.loads(body["info"])
    assert "Clip skip: 2" in info["infotexts"][0] and info["clip_skip"] == 2
    fields = {"prompt": "a red circle", "steps": 2, "seed": 5, "width": 64, "height": 64}
    direct = engine.generate(GenerationRequest(model=TINY_SD15, clip_skip=2, prompt_syntax="a1111", **fields))
    np.testing.assert_array_equal(pixels(body["images"][0]), np.asarray(direct.images[0].convert("RGB")))
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert not np.array_equal(pixels(plain["images"][0]), pixels(body["images"][0]))
    assert "Clip skip" not in json.loads(plain["info"])["infotexts"][0]

    # POST /options sets it for the requests that follow; GET /options shows it
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    try:
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        again = client.post("/sdapi/v1/txt2img", json=SMALL).json()
        np.testing.assert_array_equal(pixels(again["images"][0]), pixels(body["images"][0]))
        too_deep = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
            **MODEL, "CLIP_stop_at_last_layers": 4}})  # fmt: skip
        assert "up to 3" in refused(too_deep, CLIP)
        refused(
            client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 13}),
            "CLIP_stop_at_last_layers",
        )
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_kandinsky_refuses_clip_skip_by_its_a1111_name(client, kandinsky_models):
    body = {
        **SMALL,
        "override_settings": {"sd_model_checkpoint": TINY_KANDINSKY, "CLIP_stop_at_last_layers": 2},
    }
    detail = refused(client.post("/sdapi/v1/txt2img", json=body), CLIP)
    assert "Kandinsky" in detail


def test_override_settings_kept_afterwards_when_asked(client):
    body = {**SMALL, "override_settings": {**MODEL, "CLIP_stop_at_last_layers": 2},
            "override_settings_restore_afterwards": False}  # fmt: skip
    try:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert options["CLIP_stop_at_last_layers"] == 2 and options["sd_model_checkpoint"] == TINY_SD15
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
