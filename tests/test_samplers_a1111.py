"""Every A1111 sampler and schedule type diffusers can express builds the scheduler A1111 means,
images equal plain diffusers with that scheduler, the others are refused by name; DDIM's eta
is honoured and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_SD15
from server_support import server

from easel import GenerationRequest, InvalidRequest
from easel.schedulers import (
    A1111_SAMPLERS,
    REFUSED_SCHEDULE_TYPES,
    SCHEDULE_TYPES,
    build_scheduler,
    known_scheduler_names,
    scheduler_problem,
)

SMALL = {"model": TINY_SD15, "prompt": "a red circle", "steps": 3, "seed": 7, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def base_scheduler():
    """An SD 1.5-like scheduler config with Karras sigmas on, to show schedule types switch
    the other sigma schedules off."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
    )


EXPECTED = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_type": "midpoint"}),
    "DPM++ 2M SDE Heun": ("DPMSolverMultistepScheduler",
                          {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "PNDM": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}  # fmt: skip


def test_the_table_is_what_this_test_expects():
    assert set(A1111_SAMPLERS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_sampler_builds_its_class_and_config(base_scheduler, name):
    class_name, checks = EXPECTED[name]
    scheduler = build_scheduler(name, base_scheduler)
    assert type(scheduler).__name__ == class_name
    for key, value in checks.items():
        assert scheduler.config[key] == value, key
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012


@pytest.mark.parametrize(
    ("name", "checks"),
    [
        ("DPM++ 2M Karras", {"use_karras_sigmas": True, "use_exponential_sigmas": False}),
        ("DPM++ 2M Exponential", {"use_exponential_sigmas": True, "use_karras_sigmas": False}),
        ("DPM++ 2M Beta", {"use_beta_sigmas": True, "use_karras_sigmas": False}),
        ("Euler SGM Uniform", {"timestep_spacing": "trailing"}),
        ("Euler a Uniform", {"timestep_spacing": "linspace"}),
        ("dpm++ 2m sde karras", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
        ("DPM++ 3M SDE Exponential", {"use_exponential_sigmas": True, "solver_order": 3}),
        ("DDIM SGM Uniform", {"timestep_spacing": "trailing"}),
    ],
)
def test_schedule_types_set_the_options_and_switch_the_others_off(base_scheduler, name, checks):
    scheduler = build_scheduler(name, base_scheduler)
    for key, value in checks.items():
        assert scheduler.config[key] == value, key
    steps = 5
    scheduler.set_timesteps(steps)  # the combination is one diffusers accepts and can run
    assert len(scheduler.timesteps) >= steps


@pytest.mark.slow  # over 4 s: the quick set stays under 8 minutes
def test_every_listed_name_is_accepted_and_runs_a_whole_schedule(base_scheduler):
    """Each name easel lists validates, builds, and steps through 4 steps to finite latents."""
    import inspect

    for name in known_scheduler_names():
        assert scheduler_problem(name) is None, name
        GenerationRequest(prompt="x", scheduler=name)
        scheduler = build_scheduler(name, base_scheduler)
        scheduler.set_timesteps(4)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        for timestep in scheduler.timesteps:
            scheduler.scale_model_input(latents, timestep)
            extra = {"generator": torch.Generator().manual_seed(1)} if takes_generator else {}
            latents = scheduler.step(0.1 * torch.ones_like(latents), timestep, latents, **extra).prev_sample
        assert torch.isfinite(latents).all(), name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("DPM fast", "unknown scheduler"),
        ("DPM adaptive", "unknown scheduler"),
        ("Restart", "unknown scheduler"),
        ("Euler a Karras", "cannot run the schedule type 'Karras'"),
        ("DDIM Beta", "cannot run the schedule type 'Beta'"),
        ("DPM++ SDE SGM Uniform", "cannot run the schedule type 'SGM Uniform'"),
        ("DPM++ 2M Polyexponential", "polyexponential"),
        ("Euler Align Your Steps", "Align Your Steps"),
        ("DPM++ 2M KL Optimal", "KL-optimal"),
    ],
)
def test_refused_names_say_why(name, fragment):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="x", scheduler=name)
    assert caught.value.field == "scheduler" and fragment in str(caught.value)


@pytest.fixture(scope="module")
def plain():
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(TINY_SD15)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain_image(plain, scheduler_class, overrides, **call):
    """plain diffusers with that scheduler, given to the pipeline's constructor (which, for SD,
    turns DDIM's clip_sample off as for every SD checkpoint)."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_class).from_config(plain.scheduler.config, **overrides)
    pipe = type(plain)(**{**plain.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a red circle", num_inference_steps=3, width=64, height=64,
        generator=torch.Generator("cpu").manual_seed(7), **call,
    ).images[0]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "class_name", "overrides"),
    [
        ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        ("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        ("Euler SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ],
)  # fmt: skip
def test_images_equal_plain_diffusers_with_that_scheduler(engine, plain, name, class_name, overrides):
    result = engine.generate(GenerationRequest(**SMALL, scheduler=name))
    expected = _plain_image(plain, class_name, overrides)
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(expected))
    assert result.request.scheduler == name and result.sampler == name
    again = engine.generate(result.request)  # the recipe replays
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))


def test_infotext_writes_sampler_and_schedule_type_apart(engine):
    result = engine.generate(GenerationRequest(**SMALL, scheduler="DPM++ 2M Exponential"))
    assert "Sampler: DPM++ 2M, Schedule type: Exponential," in result.parameters()
    plain_sampler = engine.generate(GenerationRequest(**SMALL, scheduler="Euler"))
    assert "Sampler: Euler, CFG scale" in plain_sampler.parameters()


def test_ddim_eta_equals_plain_diffusers_and_is_recorded(engine, plain):
    result = engine.generate(GenerationRequest(**SMALL, scheduler="DDIM", eta=1.0))
    expected = _plain_image(plain, "DDIMScheduler", {}, eta=1.0)
    np.testing.assert_array_equal(np.asarray(result.images[0]), np.asarray(expected))
    without = engine.generate(GenerationRequest(**SMALL, scheduler="DDIM"))
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(without.images[0]))
    assert result.request.eta == 1.0 and "Eta DDIM: 1," in result.parameters()
    assert "Eta" not in without.parameters()


@pytest.mark.parametrize("scheduler", [None, "Euler a", "DDIMScheduler Karras"])
def test_eta_is_refused_where_ddim_does_not_run(scheduler):
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(prompt="x", scheduler=scheduler, eta=0.5)
    assert caught.value.field in ("eta", "scheduler")
    GenerationRequest(prompt="x", scheduler="DDIMScheduler", eta=0.5)  # the class name works too


# -- the A1111 door --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(hf_home, engine, tmp_path_factory):
    with server(tmp_path_factory.mktemp("samplers-home"), engine) as client:
        yield client


A1111_BODY = {"prompt": "a red circle", "steps": 3, "seed": 7, "width": 64, "height": 64,
              "override_settings": {"sd_model_checkpoint": TINY_SD15}}  # fmt: skip


def _field(response) -> str | None:
    body = response.json()
    return body.get("field") or (body.get("error") or {}).get("field")


def test_a1111_lists_exactly_what_it_accepts(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert [s["name"] for s in samplers] == list(A1111_SAMPLERS)
    for sampler in samplers:
        for name in (sampler["name"], *sampler["aliases"]):
            assert scheduler_problem(name) is None, name
    aliases = {a for s in samplers for a in s["aliases"]}
    assert "DPM++ 2M Karras" in aliases and "Euler a Karras" not in aliases
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers] == list(SCHEDULE_TYPES)
    assert not {s["label"] for s in schedulers} & set(REFUSED_SCHEDULE_TYPES)


@pytest.mark.parametrize("schedule", ["Exponential", "sgm_uniform", "Karras"])
def test_a1111_schedule_type_joins_the_sampler(client, schedule):
    body = {**A1111_BODY, "sampler_name": "DPM++ 2M", "scheduler": schedule}
    answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    label = {"sgm_uniform": "SGM Uniform"}.get(schedule, schedule)
    assert info["sampler_name"] == f"DPM++ 2M {label}"
    assert f"Sampler: DPM++ 2M, Schedule type: {label}," in info["infotexts"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sampler_name": "DPM++ 2M", "scheduler": "Polyexponential"}, "scheduler"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Nonsense"}, "scheduler"),
        ({"sampler_name": "Euler a", "scheduler": "Karras"}, "scheduler"),
        ({"sampler_name": "DPM++ 2M Karras", "scheduler": "Exponential"}, "scheduler"),
        ({"scheduler": "Karras"}, "scheduler"),
        ({"sampler_name": "DPM fast"}, "sampler_name"),
        ({"sampler_index": "Restart"}, "sampler_index"),
        ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
    ],
)
def test_a1111_refusals_name_the_field_sent(client, body, field):
    answer = client.post("/sdapi/v1/txt2img", json={**A1111_BODY, **body})
    assert answer.status_code == 422, answer.text
    assert _field(answer) == field


def test_a1111_ddim_eta_is_honoured_like_the_native_field(client, engine):
    body = {**A1111_BODY, "sampler_name": "DDIM", "eta": 1.0}
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert "Eta DDIM: 1," in info["infotexts"][0]
    import base64
    import io

    from PIL import Image

    answer = client.post("/sdapi/v1/txt2img", json=body).json()
    ours = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    native = engine.generate(
        GenerationRequest(**{**SMALL, "prompt_syntax": "a1111"}, scheduler="DDIM", eta=1.0)
    )
    np.testing.assert_array_equal(
        np.asarray(ours.convert("RGB")), np.asarray(native.images[0].convert("RGB"))
    )


def test_cli_eta_is_refused_without_ddim_naming_the_flag():
    from typer.testing import CliRunner

    from easel.cli.app import app

    refused = CliRunner().invoke(app, ["generate", "a cat", "--eta", "0.5", "--scheduler", "Euler"])
    assert refused.exit_code == 2, refused.output
    assert "--eta" in refused.output and "DDIM" in refused.output
    schedule = CliRunner().invoke(app, ["generate", "a cat", "--scheduler", "Euler a Karras"])
    assert schedule.exit_code == 2 and "cannot run the schedule type 'Karras'" in schedule.output
