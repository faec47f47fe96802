"""Images carry their recipe: A1111 `parameters` + easel JSON, and replay byte-identically."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import TINY_SD15
from PIL import Image, PngImagePlugin

from easel import GenerationRequest, InvalidRequest
from easel.storage.metadata import parse_parameters, read_metadata, request_from_document

SETTINGS_KEYS = {
    "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "Denoising strength", "Version",
    "Schedule type",
}  # fmt: skip


def strict_a1111(text: str) -> dict:
    """An independent, strict reader of the A1111 layout: prompt lines, an optional
    'Negative prompt:' block, and a last line starting 'Steps: ' of 'Key: value' items
    separated by ', ' where values with , : or newlines are JSON strings."""
    lines = text.split("\n")
    settings_line = lines.pop()
    assert settings_line.startswith("Steps: "), settings_line
    items, rest = {}, settings_line
    item = re.compile(r'([A-Za-z][A-Za-z ]*): ("(?:[^"\\]|\\.)*"|[^,":\n]*)(, |$)')
    while rest:
        match = item.match(rest)
        assert match, f"malformed settings at {rest!r}"
        key, value = match.group(1), match.group(2)
        assert key in SETTINGS_KEYS, key
        assert key not in items, f"duplicate {key}"
        items[key] = json.loads(value) if value.startswith('"') else value
        rest = rest[match.end() :]
    negative_at = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")), None)
    prompt_lines = lines if negative_at is None else lines[:negative_at]
    negative = "" if negative_at is None else "\n".join(lines[negative_at:])[len("Negative prompt: ") :]
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": negative, "settings": items}


def roundtrip(engine, tmp_path, suffix=".png", **fields):
    result = engine.generate(GenerationRequest(model=TINY_SD15, steps=2, **fields))
    path = result.save(tmp_path / f"image{suffix}")
    return result, read_metadata(path), path


@pytest.mark.parametrize(
    ("fields", "suffix"),
    [
        ({"prompt": "a red circle", "seed": 5}, ".png"),
        (
            {"prompt": "画一只猫 🐱, on: a mat", "negative_prompt": "模糊, blurry\nsecond line", "seed": 6},
            ".png",
        ),
        ({"prompt": "a red circle, 中文", "negative_prompt": "blue", "seed": 7}, ".jpg"),
        (
            {"prompt": "a red circle", "seed": 8, "scheduler": "DPM++ 2M Karras", "guidance_scale": 4.5},
            ".webp",
        ),
    ],
)
def test_request_png_metadata_request_roundtrip(engine, tmp_path, fields, suffix):
    result, metadata, _ = roundtrip(engine, tmp_path, suffix, **fields)
    request, index = request_from_document(metadata.document)
    assert request == result.request and index == 0
    parsed = strict_a1111(metadata.parameters)
    assert parsed["prompt"] == fields["prompt"]
    assert parsed["negative_prompt"] == fields.get("negative_prompt", "")
    assert parsed["settings"]["Seed"] == str(fields["seed"])
    assert parsed["settings"]["Size"] == "64x64"
    assert parsed["settings"]["Model"] == "stable-diffusion-v1-5"
    assert re.fullmatch(r"[0-9a-f]{10}", parsed["settings"]["Model hash"])
    assert metadata.document["model"]["hashes"]["base"].startswith(parsed["settings"]["Model hash"])
    assert parse_parameters(metadata.parameters) == parsed  # the package's reader agrees
    if "scheduler" in fields:
        # A1111 >= 1.9 writes the sampler and its schedule type apart
        assert parsed["settings"]["Sampler"] == "DPM++ 2M"
        assert parsed["settings"]["Schedule type"] == "Karras"
        assert parsed["settings"]["CFG scale"] == "4.5"


def test_img2img_records_strength_and_batch_index(engine, tmp_path, init_png):
    result = engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a", init_image=str(init_png), strength=0.5, steps=4, seed=3, num_images=2
        )
    )
    metadata = read_metadata(result.save(tmp_path / "second.png", index=1))
    parsed = strict_a1111(metadata.parameters)
    assert parsed["settings"]["Denoising strength"] == "0.5"
    assert parsed["settings"]["Seed"] == "4"
    request, index = request_from_document(metadata.document)
    assert index == 1 and request == result.request


def test_replay_is_byte_identical_and_overrides_work(engine, tmp_path):
    result = engine.generate(
        GenerationRequest(model=TINY_SD15, prompt="a green square", steps=3, seed=21, num_images=2)
    )
    original = result.save(tmp_path / "original.png", index=1)
    again, index = engine.replay(original)
    assert index == 1
    assert again.encode(index) == original.read_bytes()

    new_seed, index = engine.replay(original, {"seed": 99})
    assert index == 0 and new_seed.seeds == [99] and new_seed.request.prompt == "a green square"
    fresh = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a green square", steps=3, seed=99))
    np.testing.assert_array_equal(np.asarray(new_seed.images[0]), np.asarray(fresh.images[0]))


def test_foreign_a1111_image_is_read_but_not_replayed(engine, tmp_path):
    info = PngImagePlugin.PngInfo()
    text = (
        "a castle\nNegative prompt: fog\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15"
    )
    info.add_text("parameters", text)
    path = tmp_path / "foreign.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    metadata = read_metadata(path)
    assert metadata.document is None
    assert metadata.parsed_parameters()["settings"]["Sampler"] == "Euler a"
    with pytest.raises(InvalidRequest, match="carries no easel recipe"):
        engine.replay(path)


def test_unreadable_file_is_an_invalid_request(tmp_path):
    path = tmp_path / "not-an-image.png"
    path.write_text("hello")
    with pytest.raises(InvalidRequest, match="not a readable image"):
        read_metadata(path)


def test_wrong_schema_is_refused():
    with pytest.raises(InvalidRequest, match="schema"):
        request_from_document({"schema": "other/9", "request": {}})


def test_companion_models_are_hashed_by_role(engine, sdxl_models, kandinsky_models):
    from conftest import TINY_KANDINSKY, TINY_SDXL, TINY_SDXL_REFINER

    refined = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, refiner=TINY_SDXL_REFINER, refiner_at=0.5, prompt="a", steps=2, seed=1
        )
    )
    assert set(refined.model_hashes) == {"base", "refiner"}
    assert refined.model_hashes["base"] != refined.model_hashes["refiner"]
    kandinsky = engine.generate(
        GenerationRequest(
            model=TINY_KANDINSKY, prompt="a", steps=2, prior_steps=2, seed=1, width=64, height=64
        )
    )
    assert set(kandinsky.model_hashes) == {"base", "prior"}
