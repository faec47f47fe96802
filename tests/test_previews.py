"""Live previews (issue 18): the previewer, the engine's step callback, and every door that
delivers them (native SSE, A1111 current_image, OpenAI image streaming)."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import server, wait_for

FAST = {"model": TINY_SD15, "prompt": "a red circle", "steps": 6, "seed": 4, "width": 64, "height": 64}


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def from_data_url(url: str) -> Image.Image:
    head, _, data = url.partition(",")
    assert head == "data:image/png;base64"
    return png(base64.b64decode(data))


def sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event", ""), json.loads(lines["data"])))
    return events


# -- the previewer ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_vae():
    import torch
    from diffusers import AutoencoderKL

    from easel.demo import demo_model_path

    torch.set_num_threads(1)
    return AutoencoderKL.from_pretrained(str(demo_model_path()), subfolder="vae")


def test_demo_model_linear_map_is_fitted_and_shows_the_colours(demo_vae):
    import torch

    from easel.previews import _to_latents, linear_map

    pipe = type("Pipe", (), {"vae": demo_vae})()
    state: dict = {}
    mapping = linear_map(pipe, state)  # not the published SD factors: the demo VAE is its own
    assert linear_map(pipe, state) is mapping  # fitted once, kept in the model's state
    for colour, channel in (((1.0, 0.0, 0.0), 0), ((0.0, 1.0, 0.0), 1), ((0.0, 0.0, 1.0), 2)):
        pixels = torch.tensor(colour).view(1, 3, 1, 1).expand(1, 3, 64, 64) * 2 - 1
        with torch.inference_mode():
            latents = _to_latents(demo_vae, pixels)
        preview = mapping.image(latents)
        assert preview.size == (16, 16)  # latent resolution (the demo VAE downsamples 4x)
        r, g, b = preview.getpixel((8, 8))
        values = (r, g, b)
        assert values[channel] > 150 and all(v < 120 for i, v in enumerate(values) if i != channel), values


def test_published_factors_for_the_published_vaes():
    from easel.previews import SD15_FACTORS, SDXL_BIAS, SDXL_FACTORS, linear_map

    class AutoencoderKL:  # only its config is read
        def __init__(self, scaling: float) -> None:
            self.config = {"block_out_channels": [128, 256, 512, 512], "scaling_factor": scaling}

    sd15 = linear_map(type("Pipe", (), {"vae": AutoencoderKL(0.18215)})(), {})
    sdxl = linear_map(type("Pipe", (), {"vae": AutoencoderKL(0.13025)})(), {})
    assert sd15.factors == SD15_FACTORS and sdxl.factors == SDXL_FACTORS and sdxl.bias == SDXL_BIAS

    # auto, with TAESD in the cache: TAESD for the published VAE, linear for any other
    from easel.previews import make_previewer

    stub = type("Taesd", (), {"image": lambda self, latents: None})()
    published = type("Pipe", (), {"vae": AutoencoderKL(0.18215)})()
    assert make_previewer(2, "auto", published, {}, lambda: stub).method == "taesd"
    other = type("Pipe", (), {"vae": AutoencoderKL(0.5)})()
    fitted = {"preview_linear": {id(other.vae): (lambda: other.vae, sd15)}}  # as if fitted
    assert make_previewer(2, "auto", other, fitted, lambda: stub).method == "linear"


def test_previewer_steps_and_failures():
    import torch

    from easel.previews import Previewer

    calls = []

    def decode(latents):
        calls.append(latents.shape)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return Image.new("RGB", (4, 4))

    previewer = Previewer(2, "linear", decode)
    tensors = {"latents": torch.zeros(2, 4, 8, 8)}
    made = [previewer(step, 6, tensors) for step in range(1, 7)]
    # steps 2 and 4 (not 6, the last); the failure at step 4 is skipped, never raised
    assert [image is not None for image in made] == [False, True, False, False, False, False]
    assert len(calls) == 2
    assert previewer(2, 6, {}) is None  # no latents among the callback's tensors


def test_unknown_preview_method_is_refused(engine):
    from easel import GenerationRequest
    from easel.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        engine.generate(GenerationRequest(**FAST), previews=2, preview_method="fancy")
    assert refused.value.field == "preview_method"


# -- the engine -----------------------------------------------------------------------------------


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_previews_every_n_steps_and_the_same_pixels(engine):
    from easel import GenerationRequest

    request = GenerationRequest(**{**FAST, "num_images": 2})
    seen = []
    with_previews = engine.generate(request, on_progress=seen.append, previews=2, preview_method="linear")
    without = engine.generate(request)
    total = seen[-1].total  # PNDM runs one step more than asked (7)
    assert seen[-1].step == total and total >= 6
    # every 2 steps, never after the last one
    assert [p.step for p in seen if p.preview is not None] == [s for s in range(2, total, 2)]
    assert seen[1].preview.size == (32, 32)  # the tiny VAE's latents: 64 / 2
    for a, b in zip(with_previews.images, without.images, strict=True):
        assert a.tobytes() == b.tobytes()
    none = []
    engine.generate(request, on_progress=none.append, previews=2, preview_method="none")
    assert all(p.preview is None for p in none)


def test_hires_fix_previews_both_passes(engine):
    from easel import GenerationRequest

    request = GenerationRequest(
        **{**FAST, "steps": 4, "hires": {"scale": 2, "steps": 4, "strength": 0.5, "upscaler": "Latent"}}
    )
    seen = []
    engine.generate(request, on_progress=seen.append, previews=2)
    sizes = [(p.step, p.preview.size) for p in seen if p.preview is not None]
    assert sizes[0] == (2, (32, 32)) and sizes[-1][1] == (64, 64)  # first pass, then the second's


def test_taesd_refused_when_absent_and_used_when_cached(hf_home):
    import torch
    from diffusers import AutoencoderTiny

    from easel import Easel, GenerationRequest, Settings
    from easel.errors import InvalidRequest
    from easel.testing.tiny_models import install_into_hf_cache

    engine = Easel(Settings.from_env())
    request = GenerationRequest(**FAST)
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request, previews=2, preview_method="taesd")
    assert refused.value.field == "preview_method" and "madebyollin/taesd" in str(refused.value)

    torch.manual_seed(0)
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    snapshot = install_into_hf_cache(tiny, hf_home, "madebyollin/taesd")
    try:
        for _ in range(2):
            seen = []
            engine.generate(request, on_progress=seen.append, previews=2, preview_method="taesd")
            previews = [p.preview for p in seen if p.preview is not None]
            assert len(previews) >= 2 and {image.size for image in previews} == {(256, 256)}  # 32 x 8
        assert len(engine._taesd) == 1  # loaded once, kept
        # auto: TAESD is cached, but this model's VAE is not SD's (TAESD's latent space): linear
        for method in ("auto", "linear"):
            seen = []
            engine.generate(request, on_progress=seen.append, previews=2, preview_method=method)
            assert {p.preview.size for p in seen if p.preview is not None} == {(32, 32)}
    finally:  # the session's HF cache is shared: "auto" must not find it in other tests
        shutil.rmtree(Path(snapshot).parents[1])


def test_sdxl_refiner_and_kandinsky_previews_never_crash(engine, sdxl_models, kandinsky_models):
    from conftest import TINY_KANDINSKY, TINY_SDXL, TINY_SDXL_REFINER

    from easel import GenerationRequest

    size = {"width": 64, "height": 64, "seed": 1}
    for fields in (
        {"model": TINY_SDXL, "refiner": TINY_SDXL_REFINER, "steps": 6, "refiner_at": 0.5},
        {"model": TINY_KANDINSKY, "steps": 4, "prior_steps": 2},
    ):
        request = GenerationRequest(prompt="a cat", **size, **fields)
        seen = []
        with_previews = engine.generate(request, on_progress=seen.append, previews=1)
        assert [p.step for p in seen if p.preview is not None] == list(range(1, seen[-1].total))
        without = engine.generate(request)
        assert with_previews.images[0].tobytes() == without.images[0].tobytes()


# -- the doors ------------------------------------------------------------------------------------


def test_native_events_carry_each_new_preview_once(engine, tmp_path):
    with server(tmp_path, engine, preview_every=2) as client:
        job = client.post("/api/v1/jobs", json={**FAST, "steps": 12}).json()
        with client.stream("GET", f"/api/v1/jobs/{job['id']}/events") as stream:
            events = sse(stream.read().decode())
        assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
        progress = [data for name, data in events if name == "progress"]
        with_preview = [data for data in progress if "preview" in data]
        steps = [data["preview_step"] for data in with_preview]
        total = progress[-1]["total"]  # PNDM: one step more than asked
        assert steps and steps == sorted(set(steps)) and all(s % 2 == 0 and s < total for s in steps)
        assert from_data_url(with_preview[0]["preview"]).size == (32, 32)
        assert all("preview" not in data for data in progress if data["status"] != "running")
        record = client.get(f"/api/v1/jobs/{job['id']}").json()
        assert "preview" not in json.dumps(record)  # the job record never carries pixels


def test_a1111_progress_current_image_while_running(engine, tmp_path):
    with server(tmp_path, engine, preview_every=1) as client:
        job = client.post("/api/v1/jobs", json={**FAST, "steps": 150, "prompt": "slow"}).json()
        try:
            current = wait_for(lambda: client.get("/sdapi/v1/progress").json()["current_image"])
            assert png(base64.b64decode(current)).size == (32, 32)
            skipped = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
            assert skipped["current_image"] is None and skipped["state"]["job"] == job["id"]
        finally:
            client.post(f"/api/v1/jobs/{job['id']}/cancel")
        wait_for(lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["finished_at"])
        assert client.get("/sdapi/v1/progress").json()["current_image"] is None


def test_a1111_progress_without_previews(engine, tmp_path):
    with server(tmp_path, engine, preview_every=0) as client:
        job = client.post("/api/v1/jobs", json={**FAST, "steps": 150, "prompt": "slow"}).json()
        try:
            wait_for(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 3)
            assert client.get("/sdapi/v1/progress").json()["current_image"] is None
        finally:
            client.post(f"/api/v1/jobs/{job['id']}/cancel")


OPENAI_FAST = {"prompt": "a red circle", "model": TINY_SD15, "size": "64x64", "steps": 8, "seed": 2}


@pytest.mark.slow  # over 3 s: the quick set stays under 8 minutes
def test_openai_stream_events_as_the_openai_client_parses_them(engine, tmp_path):
    from openai.types import ImageGenStreamEvent
    from pydantic import TypeAdapter

    with server(tmp_path, engine, preview_every=2) as client:
        plain = client.post("/v1/images/generations", json=OPENAI_FAST).json()["data"][0]["b64_json"]
        body = {**OPENAI_FAST, "stream": True, "partial_images": 2}
        with client.stream("POST", "/v1/images/generations", json=body) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            events = sse(answer.read().decode())
        parsed = [TypeAdapter(ImageGenStreamEvent).validate_python(data) for _, data in events]
        assert [name for name, _ in events] == [event.type for event in parsed]
        partials = [event for event in parsed if event.type == "image_generation.partial_image"]
        assert 1 <= len(partials) <= 2
        assert [event.partial_image_index for event in partials] == list(range(len(partials)))
        assert all(png(base64.b64decode(event.b64_json)).size == (64, 64) for event in partials)
        assert parsed[-1].type == "image_generation.completed" and len(parsed) == len(partials) + 1
        assert parsed[-1].b64_json == plain and parsed[-1].size == "64x64"  # the same image as unstreamed


def test_openai_stream_without_partials_and_edits_stream(engine, tmp_path):
    from openai.types import ImageEditStreamEvent
    from pydantic import TypeAdapter

    with server(tmp_path, engine, preview_every=2) as client:
        # partial_images 0: the final image alone, in one event
        streamed = {**OPENAI_FAST, "steps": 2, "n": 2, "stream": True}
        answer = client.post("/v1/images/generations", json=streamed)
        assert [name for name, _ in sse(answer.text)] == ["image_generation.completed"] * 2

        # edits stream too
        picture = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(picture, format="PNG")
        form = {"prompt": "paint it", "model": TINY_SD15, "size": "64x64", "steps": "4", "seed": "3",
                "strength": "1.0", "stream": "true", "partial_images": "1"}  # fmt: skip
        answer = client.post(
            "/v1/images/edits", files={"image": ("i.png", picture.getvalue(), "image/png")}, data=form
        )
        edits = [TypeAdapter(ImageEditStreamEvent).validate_python(data) for _, data in sse(answer.text)]
        assert edits[-1].type == "image_edit.completed"
        assert {event.type for event in edits[:-1]} <= {"image_edit.partial_image"}


def test_openai_stream_refusals_name_the_field(engine, tmp_path):
    with server(tmp_path, engine) as client:
        for extra, field in (
            ({"stream": True, "partial_images": 4}, "partial_images"),
            ({"stream": True, "partial_images": -1}, "partial_images"),
            ({"partial_images": 2}, "partial_images"),  # partial images only come in a stream
            ({"stream": True, "response_format": "url"}, "response_format"),
        ):
            answer = client.post("/v1/images/generations", json={**OPENAI_FAST, **extra})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["param"] == field

        # a failure once the stream has started is an `error` event, as OpenAI sends it
        answer = client.post(
            "/v1/images/generations", json={**OPENAI_FAST, "model": "nobody/nothing-here", "stream": True}
        )
        assert answer.status_code == 200
        [(name, data)] = sse(answer.text)
        assert name == "error" and data["error"]["type"] == "not_found_error"
        assert "nobody/nothing-here" in data["error"]["message"]


def test_settings_and_serve_option():
    from easel import Settings
    from easel.errors import InvalidRequest

    assert Settings.from_env({"EASEL_PREVIEW_EVERY": "3"}).preview_every == 3
    assert Settings.from_env({}).preview_every == 5
    with pytest.raises(InvalidRequest):
        Settings.from_env({"EASEL_PREVIEW_METHOD": "fancy"})
    with pytest.raises(InvalidRequest):
        Settings(preview_every=-1)


def test_cli_generate_writes_the_live_preview_file(hf_home, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    preview = tmp_path / "live.png"
    args = ["generate", "a red circle", "-m", TINY_SD15, "--steps", "6", "--seed", "3", "--json",
            "--no-gallery", "-o", str(tmp_path / "out.png"), "--preview-file", str(preview),
            "--preview-every", "2"]  # fmt: skip
    done = CliRunner().invoke(app, args, env={"EASEL_HOME": str(tmp_path / "home")})
    assert done.exit_code == 0, done.output
    assert png(preview.read_bytes()).size == (32, 32)  # the latest preview (step 6 of 7)
    alone = CliRunner().invoke(app, [*args[:10], "--preview-every", "2"], env={"EASEL_HOME": str(tmp_path)})
    assert alone.exit_code != 0 and "--preview-file" in alone.output
