"""The CLI's first hour: help that reads at 80 columns, errors that name the flags typed.

In-process through typer's CliRunner: no model is loaded (every case fails while the
request is checked), so these run in the fast suite."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from easel.cli import app

COMMANDS = [[], ["generate"], ["serve"], ["replay"], ["upscale"], ["bench"], ["info"], ["gallery"]]


def help_text(*command: str) -> str:
    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert done.exit_code == 0, done.output
    return done.output


def help_column_widths(text: str) -> list[int]:
    """The width of the help column on every wrapped line of every panel: a continuation
    line is blank up to the help column, so its indent says where that column starts."""
    widths = []
    for line in text.splitlines():
        if not (line.startswith("│") and line.endswith("│")):
            continue
        inner = line[1:-1]
        stripped = inner.lstrip()
        if stripped and len(inner) - len(stripped) > 2:  # a wrapped help line
            widths.append(len(inner) - (len(inner) - len(stripped)))
    return widths


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "easel")
def test_help_reads_at_80_columns(command):
    text = help_text(*command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing cut: no option name, no word
    # Before the panels, generate's help column was ~19 characters: one or two words a line.
    assert min(help_column_widths(text), default=80) >= 25, text
    assert "<bool>" not in text  # a flag takes no value: no type shown
    assert "{" not in text.splitlines()[1]  # usage: PROMPT, not {prompt}


def test_generate_help_panels_usage_and_markup():
    text = help_text("generate")
    assert "generate [OPTIONS] PROMPT" in text.splitlines()[1]
    for panel in ("Prompt", "Size and sampling", "Hires fix", "Image to image and inpainting", "ControlNet",
                  "Model, VAE and LoRA", "Variation and tiling", "SDXL and Kandinsky", "Output",
                  "Performance"):  # fmt: skip
        assert f"─ {panel}" in text, panel
    flat = " ".join(text.replace("│", " ").split())  # the words, whatever the wrapping
    # rich markup must not eat bracketed text
    assert "pip install 'easel[detectors]'" in flat
    assert "NAME[:WEIGHT]" in flat and "[-2, 2]" in flat and "[0, 2]" in flat
    for flag in ("--no-paste-back", "--variation-strength", "--negative-aesthetic-score", "--no-vae-slicing"):
        assert f" {flag} " in flat, flag


def test_every_request_field_has_its_flag():
    from typer.main import get_command

    from easel.cli.generate import CONTROL_FLAGS, NAMED_FLAGS
    from easel.request import ControlUnit, GenerationRequest, HiresFix

    assert set(GenerationRequest.model_fields) <= set(NAMED_FLAGS)
    assert {f"hires.{name}" for name in HiresFix.model_fields} <= set(NAMED_FLAGS)
    assert set(ControlUnit.model_fields) <= set(CONTROL_FLAGS)
    generate = get_command(app).commands["generate"]  # type: ignore[attr-defined]
    flags = {opt for param in generate.params for opt in (*param.opts, *param.secondary_opts)}
    assert {*NAMED_FLAGS.values(), *CONTROL_FLAGS.values()} - flags == {"PROMPT"}


CONTROL = ["--control", "demo=x.png"]
BAD = [  # (arguments after the prompt, what the message must hold, field names it must not show)
    (["--guidance", "-1"], "invalid --guidance=-1.0:", ["guidance_scale"]),
    (["-g", "-1"], "invalid --guidance=-1.0:", ["guidance_scale"]),
    (["--num-images", "0"], "invalid --num-images=0:", ["num_images"]),
    (["--steps", "0"], "invalid --steps=0:", []),
    (["--width", "13"], "invalid --width=13:", []),
    (["--height", "7"], "invalid --height=7:", []),
    (["--seed", "-5"], "invalid --seed=-5:", []),
    (["--negative", "x" * 5000], "invalid --negative='xxx", ["negative_prompt"]),
    (["--syntax", "foo"], "invalid --syntax='foo':", ["prompt_syntax"]),
    (["--scheduler", "nope"], "invalid --scheduler='nope':", []),
    (["--eta", "2", "--scheduler", "DDIM"], "invalid --eta=2.0:", []),
    (["--clip-skip", "0"], "invalid --clip-skip=0:", ["clip_skip"]),
    (["--variation-strength", "2"], "invalid --variation-strength=2.0:", ["variation_strength"]),
    (["--seed-resize-from", "3x3"], "invalid --seed-resize-from=(3, 3):", ["seed_resize_from"]),
    (["--strength", "0.5"], "invalid --strength=0.5: it is for image-to-image; give --image too",
     ["init_image", "{"]),
    (["--image", "a.png", "--strength", "2"], "invalid --strength=2.0:", []),
    (["--mask", "m.png"], "invalid --mask='m.png':", ["mask_image", "init_image"]),
    (["--image", "a.png", "--mask-blur", "-1"], "invalid --mask-blur=-1:", ["mask_blur"]),
    (["--image", "a.png", "--mask", "m.png", "--inpaint-area", "bogus"], "invalid --inpaint-area='bogus':",
     ["inpaint_area"]),
    (["--image", "a.png", "--mask", "m.png", "--masked-content", "bogus"], "invalid --masked-content=",
     ["masked_content"]),
    (["--image", "a.png", "--outpaint", "8,0,12,0"], "invalid --outpaint=(8, 0, 12, 0):", []),
    (["--hires", "0"], "invalid --hires=0.0:", ["hires.scale"]),
    (["--hires", "2", "--hires-steps", "-1"], "invalid --hires-steps=-1:", ["hires.steps"]),
    (["--hires", "2", "--hires-strength", "3"], "invalid --hires-strength=3.0:", ["hires.strength"]),
    (["--hires", "2", "--hires-guidance", "-1"], "invalid --hires-guidance=-1.0:", ["guidance_scale"]),
    (["--hires", "2", "--upscaler", "nope"], "invalid --upscaler='nope':", ["hires.upscaler"]),
    (["--hires", "2", "--hires-scheduler", "nope"], "invalid --hires-scheduler='nope':", ["hires."]),
    (["--hires-steps", "3"], "invalid --hires-steps=3:", ["hires."]),
    (["--lora", "foo:9"], "invalid --lora='foo:9' (weight):", ["loras["]),
    (["--lora", "nothing:0.5"], "invalid --lora='nothing:0.5': no such LoRA", ["loras["]),
    (["--style", "nosuch"], "invalid --style='nosuch':", ["styles["]),
    ([*CONTROL, "--control-scale", "9"], "invalid --control-scale=9.0 (unit 0):",
     ["controls[", "conditioning_scale"]),
    ([*CONTROL, "--control-start", "0.5", "--control-end", "0.2"], "invalid --control-start=0.5 (unit 0)",
     ["controls[", "guidance_start", "guidance_end"]),
    ([*CONTROL, "--preprocess", "foo"], "invalid --preprocess='foo' (unit 0):", ["preprocessor="]),
    ([*CONTROL, "--canny-low", "-1"], "invalid --canny-low=-1 (unit 0):", ["canny_low"]),
    (["--refiner-at", "2"], "invalid --refiner-at=2.0:", ["refiner_at"]),
    (["--aesthetic-score", "-1"], "invalid --aesthetic-score=-1.0:", ["aesthetic_score"]),
    (["--negative-aesthetic-score", "-1"], "invalid --negative-aesthetic-score=-1.0:", ["aesthetic_score"]),
    (["--original-size", "0", "0"], "invalid --original-size=(0, 0):", ["original_size"]),
    (["--target-size", "0", "0"], "invalid --target-size=(0, 0):", ["target_size"]),
    (["--prior-steps", "0"], "invalid --prior-steps=0:", ["prior_steps"]),
    (["--prior-guidance", "-1"], "invalid --prior-guidance=-1.0:", ["prior_guidance_scale"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected", "unwanted"), BAD, ids=[" ".join(a)[:40] for a, _, _ in BAD])
def test_errors_name_the_flag_typed(args, expected, unwanted, tmp_path):
    env = {"EASEL_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    done = CliRunner().invoke(app, ["generate", "a cat", "--no-gallery", *args], env=env)
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.output
    assert expected in lines[0], lines[0]
    for name in unwanted:
        assert name not in lines[0], lines[0]
