"""The full-size architectures with random weights: published parameter counts (built on the
meta device, so nothing is allocated), the flags of `easel bench --architecture`, and one
end-to-end run of SD 1.5 at 64x64 through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SD15
from typer.testing import CliRunner

from easel.bench import render_report, run_benchmark
from easel.bench_architectures import build_random_pipeline, parameter_counts
from easel.cli import app

# published figures (SD 1.5 and SDXL model cards, diffusers configs)
PUBLISHED = {
    "sd15": {"unet": 859.5e6, "text_encoder": 123e6, "vae": 83.7e6},
    "sdxl": {"unet": 2.567e9, "text_encoder": 123e6, "text_encoder_2": 695e6, "vae": 83.7e6},
}


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_parameter_counts_are_the_published_ones(name):
    pipeline = build_random_pipeline(name, "meta")
    counts = parameter_counts(pipeline)
    assert set(counts) == set(PUBLISHED[name])
    for module, published in PUBLISHED[name].items():
        assert abs(counts[module] - published) / published < 0.005, (module, counts[module], published)
    assert pipeline.unet.device.type == "meta"  # nothing was allocated
    expected = "StableDiffusionPipeline" if name == "sd15" else "StableDiffusionXLPipeline"
    assert type(pipeline).__name__ == expected
    assert getattr(pipeline, "safety_checker", None) is None


def test_weights_are_made_in_the_target_dtype_and_the_default_comes_back():
    pipeline = build_random_pipeline("sdxl", "meta", torch.float16)
    for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert {p.dtype for p in getattr(pipeline, module).parameters()} == {torch.float16}, module
    assert torch.get_default_dtype() == torch.float32
    # the real architecture's shapes: SDXL's text_time embedding and 77-token prompts
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.unet.config.transformer_layers_per_block == [1, 2, 10]
    assert pipeline.tokenizer.model_max_length == 77


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--architecture", "sd15"], "without --random-weights"),
        (["--architecture", "sd3", "--random-weights"], "use one of sd15, sdxl"),
        (["--random-weights"], "without --architecture"),
        (["--architecture", "sd15", "--random-weights", "--model", "x/y"], "with --model"),
        (["--batch", "0"], "--batch=0: use 1 to 64"),
    ],
)
def test_architecture_flags_are_checked(args, expected, tmp_path):
    done = CliRunner().invoke(app, ["bench", *args], env={"EASEL_HOME": str(tmp_path), "COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert done.output.startswith("error: invalid --") and expected in done.output, done.output


def test_a_batch_compares_every_image(hf_home):
    report = run_benchmark(model=TINY_SD15, steps=2, rounds=1, warmup=1, num_images=2).as_dict()
    assert report["images_equal"] is True
    assert report["num_images"] == 2
    assert set(report["warmup_s"]) == set(report["first_image_s"]) == {"easel", "diffusers"}
    assert "batch of 2 images per call" in render_report(report)


@pytest.mark.slow  # about a minute on two CPU cores: a 4 GB float32 model saved, loaded twice
def test_sd15_full_size_with_random_weights_runs_on_cpu(tmp_path):
    command = ["bench", "--architecture", "sd15", "--random-weights", "--width", "64", "--height", "64",
               "--steps", "1", "--rounds", "1", "--warmup", "0", "--device", "cpu", "--dtype", "float32",
               "--json"]  # fmt: skip
    done = CliRunner().invoke(app, command, env={"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert done.exit_code == 0, done.output
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # stderr may have notes
    report = json.loads(line)
    assert report["architecture"] == "sd15" and report["images_equal"] is True
    assert report["size"] == "64x64" and report["device"] == "cpu" and report["dtype"] == "float32"
    assert abs(report["parameters"]["unet"] - 859.5e6) / 859.5e6 < 0.005
    assert "task_switching" not in report
