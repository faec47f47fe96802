"""ControlNet through the `easel` command: two units with per-unit options, --save-control,
the same pixels as the Python API, metadata, replay, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_CANNY, TINY_OPENPOSE, TINY_SD15
from PIL import Image, ImageDraw
from test_cli import run_easel


@pytest.fixture(autouse=True)
def _installed(controlnet_models):
    """The tiny ControlNets must be in the HF cache."""


@pytest.mark.slow
def test_two_units_save_control_and_api_equality(tmp_path, engine):
    from easel import ControlUnit, GenerationRequest
    from easel.storage.metadata import read_metadata

    photo = tmp_path / "photo.png"
    picture = Image.new("RGB", (64, 64), (10, 30, 160))
    ImageDraw.Draw(picture).ellipse([14, 14, 50, 50], fill=(240, 220, 20))
    picture.save(photo)
    out = tmp_path / "out.png"
    home = tmp_path / "home"
    done = run_easel(
        "generate", "a red circle", "-m", TINY_SD15, "--steps", "2", "--seed", "9", "-o", str(out),
        "--control", f"{TINY_CANNY}={photo}", "--preprocess", "canny", "--control-scale", "0.9",
        "--canny-low", "60", "--canny-high", "120",
        "--control", f"{TINY_OPENPOSE}={photo}", "--preprocess", "none", "--control-scale", "0.4",
        "--control-start", "0", "--control-start", "0.25", "--control-end", "1", "--control-end", "0.75",
        "--save-control", "--json", home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    controls = summary["request"]["controls"]
    assert [unit["conditioning_scale"] for unit in controls] == [0.9, 0.4]
    assert [unit["preprocessor"] for unit in controls] == ["canny", "none"]
    assert [(unit["guidance_start"], unit["guidance_end"]) for unit in controls] == [(0, 1), (0.25, 0.75)]
    saved = [tmp_path / "out-control-0.png", tmp_path / "out-control-1.png"]
    assert summary["control_images"] == [str(path) for path in saved]

    request = GenerationRequest(
        model=TINY_SD15, prompt="a red circle", steps=2, seed=9,
        controls=[
            ControlUnit(model=TINY_CANNY, image=str(photo), preprocessor="canny", conditioning_scale=0.9,
                        canny_low=60, canny_high=120),
            ControlUnit(model=TINY_OPENPOSE, image=str(photo), conditioning_scale=0.4, guidance_start=0.25,
                        guidance_end=0.75),
        ],
    )  # fmt: skip
    result = engine.generate(request)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(result.images[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(saved[0])), np.asarray(result.control_images[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(saved[1]).convert("RGB")), np.asarray(picture))

    metadata = read_metadata(out)
    settings = metadata.parsed_parameters()["settings"]
    assert settings["ControlNet 0"].startswith("Module: canny, Model: sd-controlnet-canny [")
    assert "Weight: 0.4, Guidance Start: 0.25, Guidance End: 0.75" in settings["ControlNet 1"]

    again = run_easel("replay", str(out), "-o", str(tmp_path / "again.png"), home=home)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.png").read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--control", "no-equals-sign"], "use MODEL=IMAGE"),
        (
            ["--control", "demo=a.png", "--control-scale", "1", "--control-scale", "1"],
            "given 2 times but there are 1",
        ),
        (["--control", "demo=a.png", "--control-scale", "3"], "invalid --control-scale=3.0 (unit 0)"),
        (["--control", "demo=a.png", "--preprocess", "sobel"], "invalid --preprocess='sobel' (unit 0)"),
        (
            ["--control", "demo=a.png", "--control-start", "0.9", "--control-end", "0.1"],
            "invalid --control-start=0.9 (unit 0)",
        ),
        (
            ["--control", f"{TINY_CANNY}=missing.png", "-m", TINY_SD15],
            "=missing.png' (unit 0): no such file",
        ),
    ],
)
def test_bad_control_options_exit_2_with_one_line(tmp_path, args, message):
    done = run_easel("generate", "x", "--steps", "2", *args, cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
