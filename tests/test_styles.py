"""Prompt styles (A1111's styles.csv): merged as A1111 merges them, expanded by the engine so
the recipe replays without the file, refused by name when unknown, at every door."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_SD15
from server_support import server

from easel import GenerationRequest, InvalidRequest
from easel.styles import apply_styles, load_styles, merge_prompt

CSV = (
    "name,prompt,negative_prompt\n"
    'cinematic,"cinematic still of {prompt}, film grain","cartoon, drawing"\n'
    "sharp,sharp focus,blurry\n"
    '"with, comma","a ""quoted"" word",\n'
)
SMALL = {"model": TINY_SD15, "steps": 2, "seed": 3, "width": 64, "height": 64}


@pytest.fixture
def styles_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


@pytest.fixture
def styled_engine(engine, styles_file):
    """An engine reading `styles_file`, sharing the session's loaded models."""
    from easel import Easel, Settings

    return Easel(Settings.from_env(styles_file=styles_file), cache=engine.cache)


def test_merge_follows_a1111():
    assert merge_prompt("cinematic still of {prompt}, grain", "a cat") == "cinematic still of a cat, grain"
    assert merge_prompt("sharp focus", "a cat ") == "a cat, sharp focus"
    assert merge_prompt("sharp focus", "") == "sharp focus"
    assert merge_prompt("", "a cat") == "a cat"
    assert merge_prompt("{prompt} and {prompt}", "x") == "x and x"


def test_the_csv_is_read_as_a1111_writes_it(styles_file, tmp_path):
    styles = load_styles(styles_file)
    assert list(styles) == ["cinematic", "sharp", "with, comma"]
    assert styles["with, comma"].prompt == 'a "quoted" word' and styles["with, comma"].negative_prompt == ""
    assert load_styles(tmp_path / "missing.csv") == {}
    old = tmp_path / "old.csv"
    old.write_text("name,text\nold,old style\n", encoding="utf-8")  # A1111's older column name
    assert load_styles(old)["old"].prompt == "old style"


def test_styles_apply_in_order_to_both_prompts(styles_file):
    styles = load_styles(styles_file)
    prompt, negative = apply_styles(["cinematic", "sharp"], "a cat", "ugly", styles)
    assert prompt == "cinematic still of a cat, film grain, sharp focus"
    assert negative == "ugly, cartoon, drawing, blurry"


def test_an_unknown_style_names_its_index_and_lists_the_known(styles_file):
    with pytest.raises(InvalidRequest) as caught:
        apply_styles(["sharp", "nope"], "a", "", load_styles(styles_file))
    assert caught.value.field == "styles[1]"
    assert "'nope'" in str(caught.value) and "'cinematic'" in str(caught.value)


def test_the_engine_expands_styles_and_the_recipe_replays_without_the_file(styled_engine, styles_file):
    styled = styled_engine.generate(GenerationRequest(**SMALL, prompt="a cat", styles=["cinematic"]))
    assert styled.request.styles == []
    assert styled.request.prompt == "cinematic still of a cat, film grain"
    assert styled.request.negative_prompt == "cartoon, drawing"
    assert styled.parameters().startswith("cinematic still of a cat, film grain\nNegative prompt: cartoon")
    typed = styled_engine.generate(
        GenerationRequest(
            **SMALL, prompt="cinematic still of a cat, film grain", negative_prompt="cartoon, drawing"
        )
    )
    np.testing.assert_array_equal(np.asarray(styled.images[0]), np.asarray(typed.images[0]))
    styles_file.unlink()  # replay never reads the styles file
    again = styled_engine.generate(styled.request)
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(styled.images[0]))


def test_the_engine_refuses_an_unknown_style_before_loading(styled_engine):
    with pytest.raises(InvalidRequest) as caught:
        styled_engine.generate(GenerationRequest(**SMALL, prompt="a", styles=["sharp", "missing"]))
    assert caught.value.field == "styles[1]"


def _field(response) -> str | None:
    body = response.json()
    return body.get("field") or (body.get("error") or {}).get("field")


def test_native_and_a1111_doors(styled_engine, styles_file, tmp_path):
    with server(tmp_path / "home", styled_engine, styles_file=styles_file) as client:
        listed = client.get("/api/v1/styles").json()
        assert [s["name"] for s in listed] == ["cinematic", "sharp", "with, comma"]
        assert client.get("/sdapi/v1/prompt-styles").json()[1] == {
            "name": "sharp", "prompt": "sharp focus", "negative_prompt": "blurry",
        }  # fmt: skip
        done = client.post("/api/v1/generate", json={**SMALL, "prompt": "a cat", "styles": ["sharp"]}).json()
        assert done["result"]["request"]["prompt"] == "a cat, sharp focus"
        assert done["result"]["request"]["styles"] == []
        refused = client.post("/api/v1/generate", json={**SMALL, "prompt": "a", "styles": ["nope"]})
        assert refused.status_code == 422 and _field(refused) == "styles[0]", refused.text

        body = {"prompt": "a cat", "negative_prompt": "ugly", "styles": ["cinematic"], "steps": 2,
                "seed": 3, "width": 64, "height": 64,
                "override_settings": {"sd_model_checkpoint": TINY_SD15}}  # fmt: skip
        answer = client.post("/sdapi/v1/txt2img", json=body)
        assert answer.status_code == 200, answer.text
        info = json.loads(answer.json()["info"])
        assert info["styles"] == ["cinematic"]
        assert info["infotexts"][0].startswith(
            "cinematic still of a cat, film grain\nNegative prompt: ugly, cartoon, drawing\n"
        )
        unknown = client.post("/sdapi/v1/txt2img", json={**body, "styles": ["nope"]})
        assert unknown.status_code == 422 and _field(unknown) == "styles"
        assert "'nope'" in unknown.text


def test_cli_lists_styles_and_refuses_an_unknown_one(styles_file, monkeypatch):
    from typer.testing import CliRunner

    from easel.cli.app import app

    monkeypatch.setenv("EASEL_STYLES_FILE", str(styles_file))
    runner = CliRunner()
    listed = runner.invoke(app, ["styles", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [s["name"] for s in json.loads(listed.output)["styles"]] == ["cinematic", "sharp", "with, comma"]
    refused = runner.invoke(app, ["generate", "a cat", "--style", "sharp", "--style", "nope", "--no-gallery"])
    assert refused.exit_code == 2
    assert "--style" in refused.output and "'nope'" in refused.output
