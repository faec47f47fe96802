"""ControlNet on Qwen-Image (QwenImageControlNetModel; several units as one union ControlNet over several
images) and Z-Image Turbo (ZImageControlNetModel, which borrows the transformer's modules), with tiny
random ControlNets under real repo ids: pixel parity with plain diffusers, the control steering the
picture, refusals before weights load, the shared modules released, replay and the doors."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import TINY_FLUX_DEV, TINY_QWEN_IMAGE, TINY_ZIMAGE_TURBO
from PIL import Image
from test_controlnet_transformers import bars_png as bars_png  # the fixtures: 32x32 control images
from test_controlnet_transformers import check_units_replay
from test_controlnet_transformers import disc_png as disc_png
from test_flux import check_native_door, generators, pixels
from test_flux import client as client  # the fixture: a server on the session's engine

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature
from easel.testing.tiny_dit_controlnets import (
    FLUX_CANNY_ID,
    QWEN_UNION_ID,
    ZIMAGE_UNION_21_ID,
    ZIMAGE_UNION_ID,
)

SMALL = {"width": 32, "height": 32}
QWEN_CFG = {"true_cfg_scale": 4.0, "negative_prompt": " "}  # what easel's default guidance runs


@pytest.fixture(scope="module", autouse=True)
def dit_controlnets(hf_home, flux_models, qwen_image_models, zimage_models):
    """The tiny FLUX.1-dev, Qwen-Image and Z-Image bases and the tiny DiT ControlNets, in the HF cache."""
    from easel.testing.tiny_dit_controlnets import install_tiny_dit_controlnets

    return install_tiny_dit_controlnets(hf_home)


@pytest.fixture(scope="module")
def plain_qwen(dit_controlnets):
    from diffusers import QwenImageControlNetModel, QwenImagePipeline

    return QwenImagePipeline.from_pretrained(TINY_QWEN_IMAGE), QwenImageControlNetModel.from_pretrained(
        QWEN_UNION_ID
    )


@pytest.fixture(scope="module")
def plain_zimage(dit_controlnets):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(TINY_ZIMAGE_TURBO)


QWEN_CASES = {
    # one unit, two images per prompt
    "one": ([dict(conditioning_scale=0.8, guidance_end=0.7)], 2),
    # two units on the one union ControlNet: QwenImageMultiControlNetModel, a scale and schedule each
    "union-two-images": (
        [dict(conditioning_scale=1.0, guidance_end=0.5), dict(conditioning_scale=0.6, guidance_start=0.5)],
        1,
    ),
}


@pytest.mark.parametrize("case", list(QWEN_CASES))
def test_qwen_image_equals_plain_diffusers_controlnet_pipeline(engine, plain_qwen, disc_png, bars_png, case):
    from diffusers import QwenImageControlNetPipeline, QwenImageMultiControlNetModel
    from diffusers.utils import load_image

    units, count = QWEN_CASES[case]
    images = [str(disc_png), str(bars_png)][: len(units)]
    units = [
        {**unit, "model": QWEN_UNION_ID, "image": image} for unit, image in zip(units, images, strict=True)
    ]
    result = engine.generate(
        GenerationRequest(
            model=TINY_QWEN_IMAGE,
            prompt="a red cat",
            steps=2,
            seed=9,
            num_images=count,
            controls=units,
            **SMALL,
        )
    )
    base, net = plain_qwen
    several = len(units) > 1
    plain = QwenImageControlNetPipeline.from_pipe(
        base, controlnet=QwenImageMultiControlNetModel([net]) if several else net
    )
    plain.set_progress_bar_config(disable=True)

    def per_unit(key, default):
        values = [unit.get(key, default) for unit in units]
        return values if several else values[0]

    expected = plain(
        "a red cat",
        control_image=[load_image(image) for image in images] if several else load_image(images[0]),
        controlnet_conditioning_scale=per_unit("conditioning_scale", 1.0),
        control_guidance_start=per_unit("guidance_start", 0.0),
        control_guidance_end=per_unit("guidance_end", 1.0),
        num_inference_steps=2,
        num_images_per_prompt=count,
        generator=generators(9, count),
        **QWEN_CFG,
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))
    assert sorted(key for key in result.model_hashes if key.startswith("control_")) == [
        f"control_{i}" for i in range(len(units))
    ]


ZIMAGE_CASES = {
    # 1.0 layout, no CFG (Turbo's default)
    "union-1.0": (ZIMAGE_UNION_ID, dict(conditioning_scale=0.7), {}),
    # 2.1 layout (a control refiner, a 33-channel input padded with zeros), with CFG and a negative prompt
    "union-2.1-cfg": (ZIMAGE_UNION_21_ID, {}, {"guidance_scale": 2.0, "negative_prompt": "blue"}),
}


@pytest.mark.parametrize("case", list(ZIMAGE_CASES))
def test_zimage_equals_plain_diffusers_controlnet_pipeline(engine, plain_zimage, disc_png, case):
    from diffusers import ZImageControlNetModel, ZImageControlNetPipeline
    from diffusers.utils import load_image

    repo, unit, fields = ZIMAGE_CASES[case]
    result = engine.generate(
        GenerationRequest(
            model=TINY_ZIMAGE_TURBO, prompt="a red cat", steps=3, seed=7, num_images=2, **fields, **SMALL,
            controls=[dict(model=repo, image=str(disc_png), **unit)],
        )
    )  # fmt: skip
    plain = ZImageControlNetPipeline.from_pipe(
        plain_zimage, controlnet=ZImageControlNetModel.from_pretrained(repo)
    )
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        "a red cat",
        negative_prompt=fields.get("negative_prompt"),
        guidance_scale=fields.get("guidance_scale", 0.0),  # the pipeline's own default is 5
        control_image=load_image(str(disc_png)),
        controlnet_conditioning_scale=unit.get("conditioning_scale", 1.0),  # the pipeline's default is 0.75
        num_inference_steps=3,
        num_images_per_prompt=2,
        generator=generators(7, 2),
        **SMALL,
    ).images
    for ours, theirs in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(ours), pixels(theirs))


@pytest.mark.parametrize(
    "model, control",
    [(TINY_QWEN_IMAGE, QWEN_UNION_ID), (TINY_ZIMAGE_TURBO, ZIMAGE_UNION_ID)],
    ids=["qwen", "zimage"],
)
def test_the_control_image_steers_the_picture(engine, disc_png, bars_png, model, control):
    common = dict(model=model, prompt="a red cat", steps=2, seed=3, **SMALL)
    plain = engine.generate(GenerationRequest(**common)).images[0]
    disc, bars = (
        engine.generate(GenerationRequest(**common, controls=[dict(model=control, image=str(image))])).images[
            0
        ]
        for image in (disc_png, bars_png)
    )
    assert not np.array_equal(pixels(disc), pixels(plain))
    assert not np.array_equal(pixels(disc), pixels(bars))


def test_zimage_controlnet_borrows_the_transformer_per_run_and_gives_it_back(engine, disc_png):
    """ZImageControlNetModel has no embedders or refiners of its own: the pipeline's __init__ sets the
    transformer's on it. The derived pipeline's ControlNet runs with the cached base's modules; after
    the run the cached ControlNet holds its own weights only (the next base is attached anew)."""
    from diffusers import ZImageControlNetModel

    request = GenerationRequest(
        model=TINY_ZIMAGE_TURBO, prompt="x", steps=2, seed=1, **SMALL,
        controls=[dict(model=ZIMAGE_UNION_ID, image=str(disc_png))],
    )  # fmt: skip
    engine.generate(request)
    (base,) = [entry for entry in engine.cache.loaded() if entry.source.reference == TINY_ZIMAGE_TURBO]
    (net,) = [
        entry.module for entry in engine.cache.components() if entry.source.reference == ZIMAGE_UNION_ID
    ]
    own = sum(p.numel() for p in ZImageControlNetModel.from_pretrained(ZIMAGE_UNION_ID).parameters())
    assert net.t_embedder is None and net.noise_refiner is None
    assert sum(p.numel() for p in net.parameters()) == own
    pipe = engine.task_pipeline(base, request, controlnets=[net])
    assert type(pipe).__name__ == "ZImageControlNetPipeline" and pipe.controlnet is net
    transformer = base.pipeline.transformer
    assert net.t_embedder is transformer.t_embedder and net.noise_refiner is transformer.noise_refiner
    assert net.x_pad_token is transformer.x_pad_token


def test_zimage_single_file_controlnet_equals_its_folder(engine, disc_png, tmp_path):
    """alibaba-pai publishes Z-Image ControlNets as single .safetensors files: diffusers reads the config
    by the file's keys (from hlky's repo), easel checks it once loaded."""
    from diffusers import ZImageControlNetModel
    from safetensors.torch import save_file

    path = tmp_path / "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"
    save_file(ZImageControlNetModel.from_pretrained(ZIMAGE_UNION_ID).state_dict(), str(path))
    common = dict(model=TINY_ZIMAGE_TURBO, prompt="a red cat", steps=2, seed=4, **SMALL)
    single, folder = (
        engine.generate(GenerationRequest(**common, controls=[dict(model=model, image=str(disc_png))]))
        for model in (str(path), ZIMAGE_UNION_ID)
    )
    np.testing.assert_array_equal(pixels(single.images[0]), pixels(folder.images[0]))


def _folder(tmp_path, class_name: str, **config) -> str:
    """A ControlNet folder of `class_name` with `config` (made for another base than the tiny ones)."""
    import diffusers

    folder = tmp_path / f"{class_name}-unfit"
    getattr(diffusers, class_name)(**config).save_pretrained(folder)
    return str(folder)


QWEN_FIT = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16,
                num_attention_heads=3, joint_attention_dim=16, axes_dims_rope=(8, 4, 4))  # fmt: skip
ZIMAGE_FIT = dict(
    control_layers_places=[0], control_in_dim=16, dim=32, n_refiner_layers=1, n_heads=2, n_kv_heads=2
)


def _qwen(**changes):
    """Units with a Qwen-Image ControlNet folder: the tiny transformer's config with `changes`."""
    return lambda t: [dict(model=_folder(t, "QwenImageControlNetModel", **{**QWEN_FIT, **changes}))]


def _zimage(**changes):
    """Units with a Z-Image ControlNet folder: the tiny transformer's shape with `changes`."""
    return lambda t: [dict(model=_folder(t, "ZImageControlNetModel", **{**ZIMAGE_FIT, **changes}))]


def _units(*units):
    return lambda t: list(units)


INVALID, UNSUPPORTED = InvalidRequest, UnsupportedFeature
QWEN, ZIMAGE = TINY_QWEN_IMAGE, TINY_ZIMAGE_TURBO
# (base, units, fields, error, field, fragment, whether the base loads before the refusal)
REFUSALS = {
    "flux-on-qwen": (QWEN, _units(dict(model=FLUX_CANNY_ID)), {}, INVALID, "controls[0].model",
                     "FluxControlNetModel, a ControlNet for flux1_dev / flux1_schnell", False),
    "qwen-on-zimage": (ZIMAGE, _units(dict(model=QWEN_UNION_ID)), {}, INVALID, "controls[0].model",
                       "QwenImageControlNetModel, a ControlNet for qwen_image", False),
    "zimage-on-flux": (TINY_FLUX_DEV, _units(dict(model=ZIMAGE_UNION_ID)), {}, INVALID, "controls[0].model",
                       "ZImageControlNetModel, a ControlNet for zimage_turbo", False),
    "mode-on-qwen": (QWEN, _units(dict(model=QWEN_UNION_ID, mode="canny")), {}, INVALID, "controls[0].mode",
                     "Qwen-Image ControlNets take no control type", False),
    "mode-on-zimage": (ZIMAGE, _units(dict(model=ZIMAGE_UNION_ID, mode=0)), {}, INVALID, "controls[0].mode",
                       "Z-Image Turbo ControlNets take no control type", False),
    "two-models-on-qwen": (QWEN, _units(dict(model=QWEN_UNION_ID), dict(model=FLUX_CANNY_ID)), {}, INVALID,
                           "controls[1].model", "several units on one ControlNet only", False),
    "two-units-on-zimage": (ZIMAGE, _units(*[dict(model=ZIMAGE_UNION_ID)] * 2), {}, INVALID, "controls",
                            "2 units, and Z-Image Turbo takes one", False),
    "guidance-end-on-zimage": (ZIMAGE, _units(dict(model=ZIMAGE_UNION_ID, guidance_end=0.5)), {}, INVALID,
                               "controls[0].guidance_end", "takes no control_guidance_end", False),
    "qwen-inpaint": (QWEN, _units(dict(model=QWEN_UNION_ID)), {"mask": True}, UNSUPPORTED, "controls",
                     "qwen_image models cannot be steered by a ControlNet for inpaint", False),
    "qwen-img2img": (QWEN, _units(dict(model=QWEN_UNION_ID)), {"init": True}, UNSUPPORTED, "controls",
                     "qwen_image models cannot be steered by a ControlNet for img2img", False),
    "qwen-inpainting-controlnet": (QWEN, _qwen(extra_condition_channels=4), {}, INVALID, "controls[0].model",
                                   "inpainting ControlNet (extra_condition_channels 4", False),
    "qwen-heads": (QWEN, _qwen(num_attention_heads=2), {}, INVALID, "controls[0].model",
                   "does not fit the model's transformer (num_attention_heads 2 vs the model's 3)", True),
    "zimage-depth": (ZIMAGE, _zimage(control_layers_places=[0, 5]), {}, INVALID, "controls[0].model",
                     "control_layers_places [0, 5] vs the model's 2 layers", True),
    "zimage-width": (ZIMAGE, _zimage(dim=48, n_heads=3, n_kv_heads=3), {}, INVALID, "controls[0].model",
                     "dim 48 vs the model's 32", True),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_does_not_fit_is_refused_by_name_before_its_weights_load(disc_png, init_png, tmp_path, case):
    from easel import Easel, Settings

    model, units, extra, error, field, fragment, base_loads = REFUSALS[case]
    units = [{**unit, "image": str(disc_png)} for unit in units(tmp_path)]
    fields = {}
    if extra.get("init") or extra.get("mask"):
        fields["init_image"] = str(init_png)
    if extra.get("mask"):
        mask = tmp_path / "mask.png"
        Image.new("L", (64, 64), 255).save(mask)
        fields["mask_image"] = str(mask)
    fresh = Easel(Settings.from_env())  # its own cache: what the refusal loaded, if anything
    with pytest.raises(error) as caught:
        fresh.generate(GenerationRequest(model=model, prompt="x", steps=2, controls=units, **SMALL, **fields))
    assert getattr(caught.value, "field", None) == field
    assert fragment in str(caught.value) and field in str(caught.value), str(caught.value)
    assert fresh.cache.components() == []  # the ControlNet's weights never loaded
    assert (fresh.cache.loaded() != []) == base_loads  # config-only refusals: not even the base loaded


@pytest.mark.parametrize(
    "model, units",
    [
        (TINY_QWEN_IMAGE, [dict(model=QWEN_UNION_ID, conditioning_scale=0.5, guidance_end=0.5),
                           dict(model=QWEN_UNION_ID, preprocessor="canny")]),
        (TINY_ZIMAGE_TURBO, [dict(model=ZIMAGE_UNION_21_ID, conditioning_scale=0.8)]),
    ],
    ids=["qwen-two-units", "zimage"],
)  # fmt: skip
def test_metadata_records_the_units_and_replay_is_byte_identical(engine, disc_png, tmp_path, model, units):
    units = [{**unit, "image": str(disc_png)} for unit in units]
    result, _ = check_units_replay(engine, tmp_path, model, units)
    assert "ControlNet 0:" in result.parameters()


def test_native_door(client, engine, disc_png):
    data = "data:image/png;base64," + base64.b64encode(disc_png.read_bytes()).decode("ascii")
    unit = {"model": ZIMAGE_UNION_ID, "image": data, "conditioning_scale": 0.9}
    check_native_door(
        client, engine, TINY_ZIMAGE_TURBO, family="zimage_turbo", cfg="0", count=(3, 512), controls=[unit]
    )
    refused = client.post(
        "/api/v1/generate",
        json={"model": TINY_ZIMAGE_TURBO, "prompt": "x", "steps": 2, **SMALL,
              "controls": [{**unit, "guidance_start": 0.3}]},
    )  # fmt: skip
    assert refused.status_code in (400, 422), refused.text
    assert "controls[0].guidance_start" in refused.text


@pytest.mark.slow
def test_cli_control(engine, disc_png, tmp_path):
    from test_cli import run_easel

    out = tmp_path / "cli.png"
    common = ("generate", "a cat", "-m", TINY_QWEN_IMAGE, "--steps", "2", "--seed", "5", "--width", "32",
              "--height", "32", "-o", str(out))  # fmt: skip
    done = run_easel(*common, "--control", f"{QWEN_UNION_ID}={disc_png}")
    assert done.returncode == 0, done.stderr
    api = engine.generate(
        GenerationRequest(
            model=TINY_QWEN_IMAGE, prompt="a cat", steps=2, seed=5, **SMALL,
            controls=[dict(model=QWEN_UNION_ID, image=str(disc_png))],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(Image.open(out)), pixels(api.images[0]))
    refused = run_easel(*common, "--control", f"{QWEN_UNION_ID}={disc_png}", "--control-mode", "depth")
    assert refused.returncode == 2, refused.stderr
    assert "--control-mode" in refused.stderr and "take no control type" in refused.stderr
