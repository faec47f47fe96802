"""Scheduler names from both vocabularies build fresh, correctly configured schedulers."""

from __future__ import annotations

import pytest

from easel.schedulers import a1111_name_for, build_scheduler, scheduler_spec


@pytest.fixture(scope="module")
def base_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True
    )


@pytest.mark.parametrize(
    ("name", "class_name", "checks"),
    [
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("euler", "EulerDiscreteScheduler", {}),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
        ("DDIM", "DDIMScheduler", {}),
        ("UniPCMultistepScheduler", "UniPCMultistepScheduler", {}),
    ],
)
def test_names_build_the_right_scheduler(base_scheduler, name, class_name, checks):
    scheduler = build_scheduler(name, base_scheduler)
    assert type(scheduler).__name__ == class_name
    for key, value in checks.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's betas are kept


def test_default_is_a_fresh_copy_of_the_models_own(base_scheduler):
    scheduler = build_scheduler(None, base_scheduler)
    assert type(scheduler) is type(base_scheduler)
    assert scheduler is not base_scheduler


def test_unknown_name_has_no_spec():
    assert scheduler_spec("Euler b") is None


def test_metadata_label_prefers_the_most_specific_a1111_name(base_scheduler):
    scheduler = build_scheduler("DPM++ 2M Karras", base_scheduler)
    assert a1111_name_for(type(scheduler).__name__, dict(scheduler.config)) == "DPM++ 2M Karras"
    assert a1111_name_for("EulerAncestralDiscreteScheduler", {}) == "Euler a"
