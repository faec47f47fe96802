"""Clip skip: A1111's count (2 = the layer before the model's own), diffusers' clip_skip (1 there),
on the pipelines' own prompt path and on the Compel path, in `parameters`, and in replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature
from easel.prompts.encoding import PromptEncoder, plan_prompt


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def with_text_model(text_encoder) -> None:
    """diffusers' SD encode_prompt reads `text_encoder.text_model.final_layer_norm` after a clip
    skip; transformers 5's CLIPTextModel keeps the layer norm at the top. An alias (not a
    registered submodule) lets the plain pipeline run its own clip-skip code unchanged."""
    from types import SimpleNamespace

    if not hasattr(text_encoder, "text_model"):
        object.__setattr__(
            text_encoder, "text_model", SimpleNamespace(final_layer_norm=text_encoder.final_layer_norm)
        )


@pytest.fixture(scope="module")
def sd15(engine):
    engine.generate(GenerationRequest(model=TINY_SD15, prompt="warm up", steps=1, seed=0))
    (loaded,) = [e for e in engine.cache.loaded() if e.source.location == TINY_SD15]
    return loaded


def test_clip_skip_2_equals_plain_diffusers_clip_skip_1_and_changes_the_image(engine):
    """A1111's "Clip skip: 2" is diffusers' clip_skip=1, for the prompt and (as A1111 does, and
    diffusers' call does not) the negative prompt: each encoded by diffusers' own encode_prompt."""
    from diffusers import StableDiffusionPipeline

    request = GenerationRequest(model=TINY_SD15, prompt="a red circle", negative_prompt="blue", steps=3,
                                seed=11, clip_skip=2)  # fmt: skip
    skipped = engine.generate(request)
    plain = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    plain.set_progress_bar_config(disable=True)
    with_text_model(plain.text_encoder)
    positive, _ = plain.encode_prompt("a red circle", "cpu", 1, False, clip_skip=1)
    negative, _ = plain.encode_prompt("blue", "cpu", 1, False, clip_skip=1)
    expected = plain(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        num_inference_steps=3,
        generator=[torch.Generator("cpu").manual_seed(11)],
    ).images[0]
    np.testing.assert_array_equal(pixels(skipped.images[0]), pixels(expected))

    unskipped = engine.generate(request.model_copy(update={"clip_skip": 1}))
    default = engine.generate(request.model_copy(update={"clip_skip": None}))
    np.testing.assert_array_equal(pixels(unskipped.images[0]), pixels(default.images[0]))
    assert not np.array_equal(pixels(unskipped.images[0]), pixels(skipped.images[0]))


def test_compel_path_uses_the_same_layer_as_the_pipeline(sd15):
    """A prompt Compel encodes (weights of 1, so the same text) gives diffusers' own
    clip-skipped embeddings, for each depth the tiny encoder has."""
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    with_text_model(plain.text_encoder)
    for skip in (1, 2):
        encoder = PromptEncoder(sd15.family.prompt_encoders(sd15.pipeline), clip_skip=skip)
        compel, *_ = encoder.encode(plan_prompt("a (red)1.0 circle", "compel"), plan_prompt("", "compel"))
        theirs, _ = plain.encode_prompt("a red circle", "cpu", 1, False, clip_skip=skip)
        torch.testing.assert_close(compel, theirs, rtol=0, atol=0)
        unskipped, _ = plain.encode_prompt("a red circle", "cpu", 1, False)
        assert not torch.equal(compel, unskipped)


def test_weighted_prompt_with_clip_skip_runs_on_its_own_encoder(engine, sd15):
    weighted = GenerationRequest(model=TINY_SD15, prompt="a (red)1.0 circle", steps=2, seed=4, clip_skip=2)
    plain = weighted.model_copy(update={"prompt": "a red circle"})
    # weight 1 parsed by Compel equals the plain text read by easel, both at the skipped layer
    np.testing.assert_array_equal(
        pixels(engine.generate(weighted).images[0]), pixels(engine.generate(plain).images[0])
    )
    # the cached encoders never mix: the same weighted prompt without clip skip differs
    unskipped = engine.generate(weighted.model_copy(update={"clip_skip": None}))
    assert not np.array_equal(pixels(unskipped.images[0]), pixels(engine.generate(weighted).images[0]))
    assert "prompt_encoder" in sd15.state and "prompt_encoder (clip skip 1)" in sd15.state


def test_sdxl_clip_skip_matches_diffusers_for_both_encoders(engine, sdxl_models):
    from diffusers import StableDiffusionXLPipeline

    request = GenerationRequest(model=TINY_SDXL, prompt="a red circle", negative_prompt="blue", steps=2,
                                seed=3, clip_skip=2)  # fmt: skip
    ours = engine.generate(request)
    plain = StableDiffusionXLPipeline.from_pretrained(sdxl_models[TINY_SDXL])
    plain.set_progress_bar_config(disable=True)

    def encode(text: str):
        return plain.encode_prompt(text, device="cpu", do_classifier_free_guidance=False, clip_skip=1)

    positive, _, pooled, _ = encode("a red circle")
    negative, _, negative_pooled, _ = encode("blue")
    expected = plain(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
        num_inference_steps=2,
        generator=[torch.Generator("cpu").manual_seed(3)],
    ).images[0]
    np.testing.assert_array_equal(pixels(ours.images[0]), pixels(expected))
    unskipped = engine.generate(request.model_copy(update={"clip_skip": None}))
    assert not np.array_equal(pixels(unskipped.images[0]), pixels(ours.images[0]))


def test_too_deep_a_clip_skip_and_kandinsky_are_refused_by_name(engine, kandinsky_models):
    with pytest.raises(InvalidRequest) as raised:  # the tiny text encoder has 2 layers
        engine.generate(GenerationRequest(model=TINY_SD15, prompt="x", steps=1, seed=1, clip_skip=4))
    assert raised.value.field == "clip_skip" and "up to 3" in str(raised.value)
    with pytest.raises(InvalidRequest) as raised:
        GenerationRequest(prompt="x", clip_skip=0)
    assert raised.value.field == "clip_skip"
    with pytest.raises(UnsupportedFeature) as refused:
        engine.generate(GenerationRequest(model=TINY_KANDINSKY, prompt="x", steps=2, seed=1, clip_skip=2))
    assert refused.value.field == "clip_skip"  # type: ignore[attr-defined]
    assert "clip skip" in str(refused.value)


def test_parameters_text_and_replay(engine, tmp_path):
    from easel.storage.metadata import parse_parameters, read_metadata

    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a cat", steps=2, seed=6, clip_skip=2))
    settings = parse_parameters(result.parameters())["settings"]
    assert settings["Clip skip"] == "2"
    path = result.save(tmp_path / "skipped.png")
    assert read_metadata(path).document["request"]["clip_skip"] == 2
    again, index = engine.replay(path)
    assert again.encode(index) == path.read_bytes()
    one = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a cat", steps=1, seed=6, clip_skip=1))
    assert "Clip skip" not in one.parameters()  # A1111 writes it only above 1


@pytest.mark.slow  # CLI processes
def test_cli_clip_skip(hf_home, tmp_path, engine):
    import json

    from test_cli import run_easel

    done = run_easel("generate", "a cat", "-m", TINY_SD15, "--steps", "1", "--seed", "2", "--clip-skip", "2",
                     "--json", "--no-gallery", "-o", str(tmp_path / "cli.png"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["request"]["clip_skip"] == 2
    api = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a cat", steps=1, seed=2, clip_skip=2))
    from PIL import Image

    np.testing.assert_array_equal(pixels(Image.open(tmp_path / "cli.png")), pixels(api.images[0]))
    refused = run_easel("generate", "a cat", "-m", TINY_SD15, "--clip-skip", "0")
    assert refused.returncode == 2 and "--clip-skip" in refused.stderr, refused.stderr
