"""Upscalers: model upscalers (spandrel) against spandrel called directly, tiling against one
untiled run, built-ins against PIL, refusals, Easel.upscale, and `easel upscale`.

spandrel is an optional extra (easel[upscalers]): its torchvision does not import beside CI's
CPU torch, so the tests of model upscalers are skipped without it, and the doors (Easel.upscale,
the CLI) are tested with the built-in upscalers, which need nothing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.testing.tiny_upscalers import spandrel_importable, write_tiny_upscaler
from easel.upscalers import TILE, Upscalers, run_model

needs_spandrel = pytest.mark.skipif(
    not spandrel_importable(),
    reason="model upscalers need spandrel (easel[upscalers]), whose torchvision does not import beside CI's "
    "CPU torch 2.13",
)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: every upscaler gives a different result on them."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def spandrel_direct(path: Path, image: Image.Image) -> np.ndarray:
    """The picture through the model as spandrel's own loader and call give it (uint8 HWC)."""
    import torch
    from spandrel import ModelLoader

    model = ModelLoader().load_from_file(path).eval()
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        output = model(tensor)
    return (output[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_tiny_upscaler(tmp_path / "tiny-x2.safetensors", 2)
    write_tiny_upscaler(tmp_path / "tiny-x4.safetensors", 4, seed=1)
    write_tiny_upscaler(tmp_path / "pickled.pth", 2)
    (tmp_path / "notes.txt").write_text("not an upscaler")
    return tmp_path


def test_names_are_builtins_then_model_files_sorted(folder):
    assert Upscalers(folder).names() == ["None", "Lanczos", "Nearest", "pickled", "tiny-x2", "tiny-x4"]
    assert Upscalers(folder / "missing").names() == ["None", "Lanczos", "Nearest"]


@needs_spandrel
def test_tiny_upscaler_is_read_by_spandrel_as_realesrgan_compact(folder):
    info = Upscalers(folder).info("tiny-x4")
    assert (info.scale, info.architecture, info.path.name) == (4, "Compact", "tiny-x4.safetensors")


@needs_spandrel
def test_model_upscale_equals_spandrel_called_directly(folder):
    image = picture(48, 40)
    out = Upscalers(folder).upscale(image, 96, 80, "tiny-x2")
    direct = spandrel_direct(folder / "tiny-x2.safetensors", image)
    assert out.size == (96, 80)
    np.testing.assert_array_equal(np.asarray(out), direct)
    # and the model did something a resize does not
    assert not np.array_equal(np.asarray(out), np.asarray(image.resize((96, 80), Image.Resampling.NEAREST)))


@needs_spandrel
def test_tiles_match_one_untiled_run(folder):
    """A picture larger than one tile runs in tiles; the tiles' overlap covers the model's
    receptive field, so the result matches one untiled run to within 1/255 (rounding of the
    float sums, which differ with the tile's size); in practice it is identical."""
    image = picture(TILE + 88, TILE + 40, seed=3)
    upscalers = Upscalers(folder)
    tiled = np.asarray(upscalers.upscale(image, 2 * image.width, 2 * image.height, "tiny-x2")).astype(int)
    whole = spandrel_direct(folder / "tiny-x2.safetensors", image).astype(int)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1


@needs_spandrel
def test_model_runs_until_the_size_is_reached_then_lanczos(folder):
    image = picture(24, 20, seed=4)
    upscalers = Upscalers(folder)
    model = upscalers._model("tiny-x2", folder / "tiny-x2.safetensors", "upscaler")
    twice = run_model(model, run_model(model, image))  # 4x: two passes of the 2x model, no resize
    assert np.array_equal(np.asarray(upscalers.upscale(image, 96, 80, "tiny-x2")), np.asarray(twice))
    # 3x: two passes (4x), then Lanczos down to the asked size
    expected = twice.resize((72, 60), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(upscalers.upscale(image, 72, 60, "tiny-x2")), np.asarray(expected))


@pytest.mark.parametrize(
    ("name", "resample"), [("Lanczos", "LANCZOS"), ("Nearest", "NEAREST"), ("None", "LANCZOS")]
)
def test_builtins_equal_pil_resize(folder, name, resample):
    image = picture(30, 20, seed=5)
    out = Upscalers(folder).upscale(image, 75, 50, name)
    assert np.array_equal(
        np.asarray(out), np.asarray(image.resize((75, 50), getattr(Image.Resampling, resample)))
    )


def test_unknown_name_is_refused_naming_the_field_and_listing_names(folder):
    with pytest.raises(
        InvalidRequest, match=r"invalid hires\.upscaler='nope': unknown upscaler; known: None"
    ) as e:
        Upscalers(folder).upscale(picture(8, 8), 16, 16, "nope", field="hires.upscaler")
    assert e.value.field == "hires.upscaler" and "tiny-x4" in str(e.value)


def test_pickles_are_refused_unless_allowed(folder):
    with pytest.raises(InvalidRequest, match=r"pickled\.pth is a pickle that can run code") as e:
        Upscalers(folder).upscale(picture(8, 8), 16, 16, "pickled")
    assert e.value.field == "upscaler" and "--allow-pickle" in str(e.value)


@needs_spandrel
def test_allowed_pickles_load(folder):
    image = picture(16, 12, seed=6)
    allowed = Upscalers(folder, allow_pickle=True).upscale(image, 32, 24, "pickled")
    np.testing.assert_array_equal(np.asarray(allowed), spandrel_direct(folder / "tiny-x2.safetensors", image))


@needs_spandrel
def test_files_spandrel_cannot_read_are_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(3, 3)}, str(tmp_path / "strange.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    upscalers = Upscalers(tmp_path)
    with pytest.raises(InvalidRequest, match=r"strange\.safetensors is not an upscaler model spandrel knows"):
        upscalers.upscale(picture(8, 8), 16, 16, "strange", field="upscaler_1")
    with pytest.raises(InvalidRequest, match=r"broken\.safetensors cannot be read as an upscaler model") as e:
        upscalers.upscale(picture(8, 8), 16, 16, "broken", field="upscaler_1")
    assert e.value.field == "upscaler_1"


@needs_spandrel
def test_a_model_loads_once_and_again_when_its_file_changes(folder):
    upscalers = Upscalers(folder)
    path = folder / "tiny-x2.safetensors"
    first = upscalers._model("tiny-x2", path, "upscaler")
    assert upscalers._model("tiny-x2", path, "upscaler") is first
    write_tiny_upscaler(path, 2, seed=9)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    second = upscalers._model("tiny-x2", path, "upscaler")
    assert second is not first and not second.model.training
    assert len(upscalers._models) == 1


def test_easel_upscale_sizes_and_errors(folder, tmp_path):
    from easel import Easel, Settings
    from easel.limits import Limits

    engine = Easel(Settings(home=tmp_path / "home", upscaler_dir=folder, device="cpu"))
    image = picture(40, 30, seed=7)
    assert engine.upscalers is engine.upscalers  # made once
    nearest = engine.upscale(image, scale=2, upscaler="Nearest")
    assert np.array_equal(np.asarray(nearest), np.asarray(image.resize((80, 60), Image.Resampling.NEAREST)))
    lanczos = engine.upscale(image, scale=2)  # the default
    assert np.array_equal(np.asarray(lanczos), np.asarray(image.resize((80, 60), Image.Resampling.LANCZOS)))
    assert engine.upscale(image, scale=1.5).size == (60, 45)
    assert engine.upscale(image, width=100).size == (100, 75)
    assert engine.upscale(image, height=60, upscaler="Nearest").size == (80, 60)
    assert engine.upscale(image, width=50, height=50).size == (50, 50)
    cases = [
        (dict(scale=2, width=10), "scale", "give scale, or width/height, not both"),
        ({}, "scale", "missing scale"),
        (dict(scale=0), "scale", "must be a number > 0"),
        (dict(width=0), "width", "must be an integer >= 1"),
        (dict(scale=4, limits=Limits(max_pixels=100 * 100)), "scale", "more than this server's limit"),
        (dict(scale=2, upscaler="nope"), "upscaler", "unknown upscaler"),
    ]
    for arguments, field, message in cases:
        with pytest.raises(InvalidRequest, match=message) as e:
            engine.upscale(image, **arguments)
        assert e.value.field == field


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_UPSCALER_DIR", str(folder))
    monkeypatch.setenv("EASEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EASEL_DEVICE", "cpu")
    return folder


def source_png(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 3, Seed: 7, Size: 40x30")
    info.add_text("easel", json.dumps({"schema": "easel.image/1", "seed": 7}))
    picture(40, 30, seed=8).save(path, pnginfo=info)
    return path


def test_cli_upscale_writes_the_png_with_its_text_and_postprocessing(cli_env, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    source = source_png(tmp_path / "src.png")
    out = tmp_path / "big.png"
    done = CliRunner().invoke(app, ["upscale", str(source), "--scale", "2", "-u", "Nearest", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert f"{out}  80x60" in done.output
    written = Image.open(out)
    assert written.text["parameters"] == "a red circle\nSteps: 3, Seed: 7, Size: 40x30"
    assert json.loads(written.text["easel"]) == {"schema": "easel.image/1", "seed": 7}
    assert written.text["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    expected = Image.open(source).convert("RGB").resize((80, 60), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))
    sized = CliRunner().invoke(app, ["upscale", str(source), "--width", "100", "-o", str(out), "--json"])
    assert sized.exit_code == 0, sized.output
    report = json.loads(sized.output)
    assert (report["width"], report["height"]) == (100, 75)
    assert (
        Image.open(out).text["postprocessing"]
        == "Postprocess upscale to: 100x75, Postprocess upscaler: Lanczos"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "0"], "error: invalid --scale=0.0: must be a number > 0"),
        ([], "error: missing --scale"),
        (["--scale", "2", "--width", "9"], "error: invalid --scale=2.0: give scale, or width/height"),
        (["--scale", "2", "-u", "nope"], "error: invalid --upscaler='nope': unknown upscaler"),
        (["--scale", "2", "-u", "pickled"], "error: invalid --upscaler='pickled': pickled.pth is a pickle"),
        (["--scale", "2", "-o", "out.jpg"], "error: invalid --output='out.jpg'"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_flag(cli_env, tmp_path, args, message):
    from typer.testing import CliRunner

    from easel.cli import app

    source = source_png(tmp_path / "src.png")
    done = CliRunner().invoke(app, ["upscale", str(source), *args])
    assert done.exit_code == 2, done.output
    assert message in done.output, done.output


@needs_spandrel
def test_cli_upscale_with_a_model_and_allow_pickle(cli_env, tmp_path):
    from typer.testing import CliRunner

    from easel import Easel, Settings
    from easel.cli import app

    source = source_png(tmp_path / "src.png")
    out = tmp_path / "big.png"
    done = CliRunner().invoke(app, ["upscale", str(source), "--scale", "2", "-u", "tiny-x2", "-o", str(out)])
    assert done.exit_code == 0, done.output
    written = Image.open(out)
    assert written.text["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: tiny-x2"
    expected = Upscalers(cli_env).upscale(Image.open(source).convert("RGB"), 80, 60, "tiny-x2")
    assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))
    engine = Easel(Settings(home=tmp_path / "home", upscaler_dir=cli_env, device="cpu"))
    assert np.array_equal(
        np.asarray(engine.upscale(Image.open(source), scale=2, upscaler="tiny-x2")), np.asarray(expected)
    )
    pickled = tmp_path / "p.png"
    done = CliRunner().invoke(app, ["upscale", str(source), "--scale", "2", "-u", "pickled", "--allow-pickle",
                                    "-o", str(pickled)])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert Image.open(pickled).size == (80, 60)


def test_cli_missing_image_is_named(cli_env, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    missing = CliRunner().invoke(app, ["upscale", str(tmp_path / "nothing.png"), "--scale", "2"])
    assert missing.exit_code == 2 and "invalid IMAGE=" in missing.output and "no such file" in missing.output


def test_cli_upscalers_lists_names(cli_env):
    from typer.testing import CliRunner

    from easel.cli import app

    done = CliRunner().invoke(app, ["upscalers"])
    assert done.exit_code == 0, done.output
    assert done.output.split() == ["None", "Lanczos", "Nearest", "pickled", "tiny-x2", "tiny-x4"]
    listed = json.loads(CliRunner().invoke(app, ["upscalers", "--json"]).output)
    names = ["None", "Lanczos", "Nearest", "pickled", "tiny-x2", "tiny-x4"]
    assert listed == {"folder": str(cli_env), "upscalers": names}


def test_model_upscaler_without_spandrel_says_what_to_install(cli_env, tmp_path):
    """Without spandrel (CI: its torchvision does not import beside the CPU torch) a model
    upscaler file is still listed, and asking for it says what to install, at every door;
    the built-ins keep working. (The A1111 route: tests/test_server_upscale.py.)"""
    from typer.testing import CliRunner

    from easel import Easel, Settings
    from easel.cli import app

    if spandrel_importable():
        pytest.skip("spandrel is installed here")
    install = r"pip install 'easel\[upscalers\]'"
    image = picture(40, 30, seed=9)
    engine = Easel(Settings(home=tmp_path / "home", upscaler_dir=cli_env, device="cpu"))
    with pytest.raises(UnsupportedFeature, match=install):
        engine.upscale(image, scale=2, upscaler="tiny-x2")
    assert engine.upscale(image, scale=2, upscaler="Nearest").size == (80, 60)
    assert "tiny-x2" in engine.upscalers.names()
    source = source_png(tmp_path / "src.png")
    out = str(tmp_path / "o.png")
    for extra in (["-u", "tiny-x2"], ["-u", "pickled", "--allow-pickle"]):  # an allowed pickle gets past that
        done = CliRunner().invoke(app, ["upscale", str(source), "--scale", "2", *extra, "-o", out])
        assert done.exit_code == 2, done.output
        assert "pip install 'easel[upscalers]'" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_cli_upscale_as_a_subprocess(folder, tmp_path):
    source = source_png(tmp_path / "src.png")
    env = {**os.environ, "EASEL_UPSCALER_DIR": str(folder), "EASEL_HOME": str(tmp_path / "home"),
           "EASEL_THREADS": "1"}  # fmt: skip
    command = [sys.executable, "-m", "easel", "upscale", str(source)]
    done = subprocess.run(
        [*command, "--scale", "2", "-u", "Nearest", "-o", "out.png"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = Image.open(source).convert("RGB").resize((80, 60), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), np.asarray(expected))
    bad = subprocess.run(
        [*command, "--scale", "-1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: invalid --scale=-1.0: must be a number > 0"]
