"""The engine through the Python API: parity with plain diffusers, determinism, sharing."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGGING, TINY_SD15, TINY_SD15_OLD_ID
from PIL import Image

from easel import Cancelled, GenerationRequest, InvalidRequest, ModelNotFound, UnsupportedFeature


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_text2img_equals_plain_diffusers_pixel_for_pixel(engine):
    from diffusers import AutoPipelineForText2Image

    request = GenerationRequest(
        model=TINY_SD15, prompt="a red circle", negative_prompt="blue", steps=4, seed=31, num_images=2
    )
    result = engine.generate(request)

    plain = AutoPipelineForText2Image.from_pretrained(TINY_SD15)
    plain.set_progress_bar_config(disable=True)
    generators = [torch.Generator("cpu").manual_seed(31 + i) for i in range(2)]
    expected = plain(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=4,
        num_images_per_prompt=2,
        generator=generators,
    ).images
    assert len(result.images) == 2
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert result.request.width == result.request.height == 64  # the model's native size
    assert result.seeds == [31, 32]


def test_img2img_equals_plain_diffusers_and_reports_steps_run(engine, init_png):
    from diffusers import AutoPipelineForImage2Image
    from diffusers.utils import load_image

    request = GenerationRequest(
        model=TINY_SD15,
        prompt="a red circle",
        init_image=str(init_png),
        strength=0.6,
        steps=10,
        seed=5,
        scheduler="Euler a",
    )
    result = engine.generate(request)
    assert result.effective_steps == 6
    assert result.request.scheduler == "Euler a"

    from diffusers import EulerAncestralDiscreteScheduler

    plain = AutoPipelineForImage2Image.from_pretrained(TINY_SD15)
    plain.scheduler = EulerAncestralDiscreteScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a red circle",
        image=load_image(str(init_png)),
        strength=0.6,
        num_inference_steps=10,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_same_request_twice_gives_byte_identical_pngs(engine):
    request = GenerationRequest(model=TINY_SD15, prompt="a green square", steps=3, seed=11)
    first, second = engine.generate(request), engine.generate(request)
    assert png_bytes(first.images[0]) == png_bytes(second.images[0])


def test_image_i_of_a_batch_uses_seed_plus_i(engine):
    batch = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a cat", steps=3, seed=100, num_images=3)
    )
    assert batch.seeds == [100, 101, 102]
    assert not np.array_equal(pixels(batch.images[0]), pixels(batch.images[1]))


def test_random_seed_is_drawn_and_recorded_so_the_result_replays(engine):
    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a dog", steps=2))
    assert result.request.seed is not None and result.request.steps == 2
    again = engine.generate(result.request)
    assert png_bytes(again.images[0]) == png_bytes(result.images[0])


def test_the_concrete_request_names_the_scheduler_that_ran_and_replays(engine):
    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a dog", seed=3, steps=3))
    # the tiny model's own (PNDM with skip_prk_steps, as SD 1.5's), named as A1111 names it
    assert result.request.scheduler == result.sampler == "PLMS"
    again = engine.generate(result.request)
    assert again.request.scheduler == "PLMS"
    assert png_bytes(again.images[0]) == png_bytes(result.images[0])


def test_a_refiner_of_another_kind_keeps_the_scheduler_unnamed():
    from types import SimpleNamespace

    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    from easel.engine import _with_scheduler_that_ran

    request = GenerationRequest(prompt="a dog")
    refiner = SimpleNamespace(pipeline=SimpleNamespace(scheduler=EulerDiscreteScheduler()))
    # naming PNDM would hand the refiner PNDM instead of its own Euler: a different image
    assert _with_scheduler_that_ran(request, "PNDM", refiner).scheduler is None
    same_kind = SimpleNamespace(pipeline=SimpleNamespace(scheduler=PNDMScheduler()))
    assert _with_scheduler_that_ran(request, "PNDM", same_kind).scheduler == "PNDM"
    assert _with_scheduler_that_ran(request, "TCDScheduler", None).scheduler is None  # not a name easel takes
    explicit = request.model_copy(update={"scheduler": "Euler a"})
    assert _with_scheduler_that_ran(explicit, "Euler a", None) is explicit


@pytest.mark.parametrize("syntax", ["compel", "a1111", "plain"])
def test_an_empty_prompt_is_unconditional_generation(engine, tmp_path, syntax):
    """As in A1111 and diffusers: no prompt draws from the model's unconditional distribution."""
    from easel.storage.metadata import read_metadata

    request = GenerationRequest(model=TINY_SD15, prompt="", prompt_syntax=syntax, steps=2, seed=9)
    result = engine.generate(request)
    assert result.request.prompt == "" and result.images[0].size == (64, 64)
    path = result.save(tmp_path / "empty.png", 0)
    assert read_metadata(path).parsed_parameters()["prompt"] == ""
    again, index = engine.replay(path)
    assert again.request.prompt == "" and png_bytes(again.images[index]) == png_bytes(result.images[0])


def test_family_defaults_fill_the_concrete_request(engine):
    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a dog", seed=1, steps=2))
    assert result.request.guidance_scale == 7.5
    assert result.model_family == "sd15"


def test_img2img_shares_the_base_weights_and_gets_its_own_scheduler(engine):
    source = engine.resolve_model(TINY_SD15)
    from easel.models.cache import detect_family

    family = detect_family(source)
    with engine.cache.lease(source, family, device="cpu", dtype=torch.float32, allow_pickle=False) as loaded:
        text2img = engine.task_pipeline(loaded, GenerationRequest(prompt="x"))
        img2img = engine.task_pipeline(loaded, GenerationRequest(prompt="x", init_image="i.png"))
        base = loaded.pipeline
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    for derived in (text2img, img2img):
        assert (
            derived.unet is base.unet
            and derived.vae is base.vae
            and derived.text_encoder is base.text_encoder
        )
        assert derived.scheduler is not base.scheduler
    for ours, theirs in zip(img2img.unet.parameters(), base.unet.parameters(), strict=True):
        assert ours is theirs
    assert text2img.scheduler is not img2img.scheduler


def test_txt2img_then_img2img_loads_the_base_once(engine, init_png):
    from easel import Easel, Settings

    fresh = Easel(Settings.from_env())
    fresh.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=2, seed=1))
    cached = fresh.cache.loaded()[0].pipeline
    fresh.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=2, seed=1, init_image=str(init_png)))
    assert len(fresh.cache) == 1
    assert fresh.cache.loaded()[0].pipeline is cached


def test_both_real_repo_ids_load_offline(engine):
    result = engine.generate(GenerationRequest(model=TINY_SD15_OLD_ID, prompt="a", steps=1, seed=0))
    assert result.images[0].size == (64, 64)


def test_local_diffusers_folder_loads(engine, hf_home, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "my-model"
    StableDiffusionPipeline.from_pretrained(TINY_SD15).save_pretrained(folder)
    from_folder = engine.generate(GenerationRequest(model=str(folder), prompt="a", steps=2, seed=3))
    from_hub = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=2, seed=3))
    np.testing.assert_array_equal(pixels(from_folder.images[0]), pixels(from_hub.images[0]))


def test_explicit_size_is_honoured(engine):
    result = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", steps=1, seed=0, width=96, height=48)
    )
    assert result.images[0].size == (96, 48)


def test_progress_reports_each_step_and_cancel_stops_the_run(engine):
    seen = []
    engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", steps=4, seed=0, scheduler="Euler"),
        on_progress=seen.append,
    )
    assert [(p.step, p.total) for p in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]

    cancel = threading.Event()

    def stop_after_two(progress):
        if progress.step == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="after step 3"):
        engine.generate(
            GenerationRequest(model=TINY_SD15, prompt="a", steps=10, seed=0),
            on_progress=stop_after_two,
            cancel=cancel,
        )


def test_safety_checker_flags_are_reported_and_can_be_turned_off(engine):
    flagged = engine.generate(GenerationRequest(model=TINY_FLAGGING, prompt="a", steps=2, seed=0))
    assert flagged.nsfw == [True]
    assert pixels(flagged.images[0]).max() == 0  # diffusers blacks it out; easel says so
    unchecked = engine.generate(
        GenerationRequest(model=TINY_FLAGGING, prompt="a", steps=2, seed=0, safety_checker=False)
    )
    assert unchecked.nsfw == [False]
    assert pixels(unchecked.images[0]).max() > 0
    clean = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=2, seed=0))
    assert clean.nsfw == [False]


def test_init_image_orientation_mode_and_size_are_normalised(engine, tmp_path):
    image = Image.new("RGBA", (76, 44), (255, 0, 0, 128))  # landscape, not multiples of 8
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the picture is really portrait
    path = tmp_path / "phone.png"
    image.save(path, exif=exif)
    result = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", init_image=str(path), strength=0.5, steps=2, seed=0)
    )
    assert result.images[0].size == (40, 72)  # 44x76 after rotation, rounded down to multiples of 8
    assert result.init_image.mode == "RGB"


def test_grid_puts_the_init_image_first(engine, init_png):
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a", init_image=str(init_png), steps=2, seed=0, num_images=3
        )
    )
    grid = result.grid()
    assert grid.size == (128, 128)  # 4 cells of 64x64
    np.testing.assert_array_equal(pixels(grid.crop((0, 0, 64, 64))), pixels(Image.open(init_png)))
    np.testing.assert_array_equal(pixels(grid.crop((64, 0, 128, 64))), pixels(result.images[0]))


@pytest.mark.parametrize(
    ("fields", "error", "fragment"),
    [
        ({"model": "nobody/nothing"}, ModelNotFound, "not in the Hugging Face cache"),
        ({"model": "./missing-folder"}, ModelNotFound, "does not exist"),
        ({"model": "weights.safetensors"}, ModelNotFound, "does not exist"),
        ({"model": "not a model id"}, InvalidRequest, "not a local path and not a Hugging Face repo id"),
        (
            {"init_image": "no-such-file.png"},
            InvalidRequest,
            "invalid init_image='no-such-file.png': no such file",
        ),
    ],
)
def test_bad_references_fail_before_loading(engine, fields, error, fragment):
    with pytest.raises(error, match=fragment):
        engine.generate(GenerationRequest(prompt="a", steps=2, **{"model": TINY_SD15, **fields}))


def test_an_unknown_model_fails_fast_when_the_hub_cannot_be_reached(engine, monkeypatch):
    """Without a network huggingface_hub retries for about 25 s before it looks in the cache;
    easel probes the endpoint once and asks the cache alone."""
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    started = time.perf_counter()
    with pytest.raises(ModelNotFound, match=r"cannot be reached; check the name .* HF_HUB_OFFLINE=1"):
        engine.generate(GenerationRequest(model="nobody/nothing-at-all", prompt="a", steps=1))
    assert time.perf_counter() - started < 2
    # a cached model still works with the hub out of reach
    engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", steps=1, seed=1))


def test_unreadable_init_image_names_the_field(engine, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(InvalidRequest, match=r"invalid init_image=.*not a readable image"):
        engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", init_image=str(bad), steps=2))


def test_pickle_checkpoints_are_refused_unless_allowed(engine, tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"\x80\x04.")
    with pytest.raises(InvalidRequest, match=r"\.ckpt files are pickles.*--allow-pickle"):
        engine.generate(GenerationRequest(model=str(checkpoint), prompt="a"))


def test_folder_without_model_index_says_where_it_looked(engine, tmp_path):
    with pytest.raises(ModelNotFound, match=r"no model_index\.json in"):
        engine.generate(GenerationRequest(model=str(tmp_path), prompt="a"))


def test_unsupported_pipeline_class_is_named(engine, tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "WuerstchenPipeline"}')
    with pytest.raises(UnsupportedFeature, match="'WuerstchenPipeline' is not supported"):
        engine.generate(GenerationRequest(model=str(tmp_path), prompt="a"))


def test_data_url_init_image(engine, init_png):
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(init_png.read_bytes()).decode()
    from_url = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", init_image=data_url, steps=2, seed=4)
    )
    from_path = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", init_image=str(init_png), steps=2, seed=4)
    )
    np.testing.assert_array_equal(pixels(from_url.images[0]), pixels(from_path.images[0]))


def test_corrupt_safetensors_file_is_an_invalid_model(engine, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"junk")
    with pytest.raises(InvalidRequest, match=r"invalid model=.*not a readable checkpoint"):
        engine.generate(GenerationRequest(model=str(broken), prompt="a"))


def test_init_image_from_an_http_url(engine, init_png):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(init_png.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{init_png.name}"
        from_url = engine.generate(
            GenerationRequest(model=TINY_SD15, prompt="a", init_image=url, steps=2, seed=4)
        )
        missing = url.replace(init_png.name, "missing.png")
        with pytest.raises(InvalidRequest, match=r"invalid init_image=.*could not download"):
            engine.generate(GenerationRequest(model=TINY_SD15, prompt="a", init_image=missing, steps=2))
    finally:
        server.shutdown()
    from_path = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a", init_image=str(init_png), steps=2, seed=4)
    )
    np.testing.assert_array_equal(pixels(from_url.images[0]), pixels(from_path.images[0]))


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_half_precision_bases_stay_in_their_dtype_across_runs(hf_home, init_png):
    """from_pipe casts to float32 unless given a dtype: a derived task pipeline must leave the
    cached base's shared modules in the dtype they were loaded in (bfloat16 here, float16 on GPUs)."""
    import torch

    from easel import Easel, Settings

    half = Easel(Settings.from_env(dtype="bfloat16"))
    for fields in ({}, {"init_image": str(init_png), "strength": 1.0}):
        half.generate(GenerationRequest(model=TINY_SD15, prompt="a red circle", steps=1, seed=1, **fields))
        (loaded,) = half.cache.loaded()
        pipe = loaded.pipeline
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}, fields


@pytest.mark.slow
def test_the_python_api_prints_no_library_noise(hf_home, tmp_path):
    """Loading bars, 'requires torchvision; falling back', 'Could not reach the Hub', dtype notes:
    none of it reaches a Python API user's terminal on a normal run; EASEL_DEBUG=1 shows it."""
    import os
    import subprocess
    import sys

    script = (
        "from easel import Easel, GenerationRequest\n"
        f"Easel().generate(GenerationRequest(model={TINY_SD15!r}, prompt='a red circle', steps=2, seed=1))\n"
        "print('done')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_HOME": str(tmp_path), "EASEL_THREADS": "1"}
    env.pop("EASEL_DEBUG", None)

    def run(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-c", script]
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)

    quiet = run(env)
    assert quiet.returncode == 0 and quiet.stdout == "done\n", quiet.stderr
    assert quiet.stderr == ""
    loud = run({**env, "EASEL_DEBUG": "1"})
    assert loud.returncode == 0 and "Loading" in loud.stderr
