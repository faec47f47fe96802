"""GenerationRequest validates once, at the door, and names the field and value."""

from __future__ import annotations

import pytest

from easel import GenerationRequest, InvalidRequest


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"width": 513}, "width", "invalid width=513: must be a multiple of 8"),
        ({"height": 0}, "height", "invalid height=0"),
        ({"steps": 0}, "steps", "invalid steps=0"),
        ({"guidance_scale": -1}, "guidance_scale", "invalid guidance_scale=-1"),
        ({"init_image": "x.png", "strength": 1.5}, "strength", "invalid strength=1.5"),
        ({"init_image": "x.png", "strength": -0.1}, "strength", "invalid strength=-0.1"),
        ({"scheduler": "Euler b"}, "scheduler", "invalid scheduler='Euler b': unknown scheduler"),
        ({"num_images": 0}, "num_images", "invalid num_images=0"),
        ({"seed": -2}, "seed", "invalid seed=-2"),
        ({"sampler": "Euler"}, "sampler", "unknown field 'sampler'"),
        ({"strength": 0.5}, None, "strength is only used for image-to-image"),
    ],
)
def test_bad_fields_name_the_field_and_value(fields, field, fragment):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="a cat", **fields)
    assert fragment in str(caught.value)
    if field is not None:
        assert caught.value.field == field


def test_missing_prompt_is_named():
    with pytest.raises(InvalidRequest, match="prompt is required"):
        GenerationRequest()


def test_img2img_with_no_effective_step_is_refused_with_the_numbers():
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="a", init_image="x.png", steps=4, strength=0.2)
    message = str(caught.value)
    assert "4 x 0.2" in message and "0 denoising steps" in message
    assert caught.value.field == "strength"


def test_img2img_default_strength_counts_too():
    with pytest.raises(InvalidRequest, match=r"1 x 0.8"):
        GenerationRequest(prompt="a", init_image="x.png", steps=1)


def test_seed_minus_one_means_random_and_names_match_loosely():
    request = GenerationRequest(prompt="a", seed=-1, scheduler="dpm++ 2m karras")
    assert request.seed is None
    assert request.scheduler == "dpm++ 2m karras"


def test_requests_are_immutable_values():
    request = GenerationRequest(prompt="a", seed=3)
    assert request == GenerationRequest.from_fields(request.model_dump())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        request.seed = 4  # type: ignore[misc]
