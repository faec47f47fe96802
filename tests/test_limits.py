"""Limits hold on the concrete request, and a job can be cancelled at every stage."""

from __future__ import annotations

import pytest
from conftest import TINY_SD15

from easel import Cancelled, GenerationRequest, InvalidRequest
from easel.limits import Limits


def test_default_steps_are_checked_against_the_limit(engine):
    with pytest.raises(
        InvalidRequest, match=r"invalid steps=50 \(the default\): more than .* limit of 4"
    ) as caught:
        engine.generate(GenerationRequest(model=TINY_SD15, prompt="x", seed=1), limits=Limits(max_steps=4))
    assert caught.value.field == "steps"


def test_second_order_samplers_count_their_model_evaluations(engine):
    """Heun evaluates the UNet twice per step: 3 steps count as 6 against a limit of 4 (Euler: 3)."""
    request = GenerationRequest(model=TINY_SD15, prompt="x", seed=1, steps=3, scheduler="Heun")
    with pytest.raises(
        InvalidRequest, match="Heun sampler evaluates the model 2 times per step, so 3 steps count as 6"
    ):
        engine.generate(request, limits=Limits(max_steps=4))
    result = engine.generate(request.model_copy(update={"scheduler": "Euler"}), limits=Limits(max_steps=4))
    assert result.effective_steps == 3


def test_size_from_the_init_image_is_checked(engine, init_png):
    """A 64x64 init image under a 4095-pixel limit: refused although width/height were not sent."""
    request = GenerationRequest(model=TINY_SD15, prompt="x", seed=1, steps=2, init_image=str(init_png))
    with pytest.raises(InvalidRequest, match=r"64x64 \(taken from the input image or the model\)") as caught:
        engine.generate(request, limits=Limits(max_pixels=64 * 64 - 1))
    assert caught.value.field == "width"
    assert engine.generate(request, limits=Limits(max_pixels=64 * 64)).request.width == 64


def test_native_size_is_checked(engine):
    request = GenerationRequest(model=TINY_SD15, prompt="x", seed=1, steps=2)
    with pytest.raises(InvalidRequest, match="more than this server's limit of 1024 pixels"):
        engine.generate(request, limits=Limits(max_pixels=1024))


class CancelAfter:
    """A cancel token that turns on at its n-th look: cancels at a chosen stage."""

    def __init__(self, looks: int) -> None:
        self.looks = looks

    def is_set(self) -> bool:
        self.looks -= 1
        return self.looks < 0


@pytest.mark.parametrize(
    ("looks", "stage"),
    [
        (0, "cancelled before loading"),
        (1, "cancelled after loading"),
        (2, "cancelled after encoding the prompts"),
        (3, "cancelled after step 1"),
    ],
)
def test_a_job_can_be_cancelled_at_every_stage(engine, looks: int, stage: str):
    request = GenerationRequest(model=TINY_SD15, prompt="a (red)1.2 circle", seed=1, steps=3)
    with pytest.raises(Cancelled, match=stage):
        engine.generate(request, cancel=CancelAfter(looks))
