"""Qwen-Image-Edit (QwenImageEditPipeline, QwenImageEditPlusPipeline) is refused at detection, naming
why: its processor (transformers' Qwen2VLProcessor) cannot be built without torchvision. Checked here:
the reason still holds in this environment, the message at every door (Python, native HTTP, OpenAI
edits without a mask, the CLI's --edit), and that nothing loads before the refusal (the models
installed here are a model_index.json alone, under the real repo ids)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from easel import GenerationRequest, UnsupportedFeature
from easel.families.qwen_image_edit import EDIT_MODELS

EDIT_2509 = "Qwen/Qwen-Image-Edit-2509"
WHY = ("Qwen2VLProcessor", "torchvision", "FLUX.1-Kontext-dev")  # what every refusal says


def check_refusal(message: str, class_name: str = "QwenImageEditPlusPipeline") -> None:
    """The message names the model's class and repo, the component that fails and why, and what
    to use instead."""
    assert f"pipeline class {class_name!r} is not supported by easel yet" in message, message
    assert EDIT_MODELS[class_name][0] in message
    for word in WHY:
        assert word in message, (word, message)


@pytest.fixture(scope="module")
def edit_models(hf_home: Path):
    """Both Edit repos in the HF cache as model_index.json alone (no weights: the refusal comes at
    detection, before anything loads); removed after, so other tests' model lists are unchanged."""
    repos = []
    for class_name, (repo_id, _) in EDIT_MODELS.items():
        repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
        revision = hashlib.sha1(repo_id.encode()).hexdigest()
        (repo / "snapshots" / revision).mkdir(parents=True)
        index = {
            "_class_name": class_name,
            "_diffusers_version": "0.42.1",
            "processor": ["transformers", "Qwen2VLProcessor"],
        }
        (repo / "snapshots" / revision / "model_index.json").write_text(json.dumps(index))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        repos.append(repo)
    yield
    for repo in repos:
        shutil.rmtree(repo)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qwen-edit-inputs") / "reference.png"
    Image.new("RGB", (48, 32), (200, 40, 40)).save(path)
    return path


@pytest.mark.parametrize("class_name", sorted(EDIT_MODELS))
def test_detection_refuses_the_edit_models_naming_why(class_name):
    from easel.families import family_for_index

    with pytest.raises(UnsupportedFeature) as refused:
        family_for_index({"_class_name": class_name})
    check_refusal(str(refused.value), class_name)
    assert refused.value.field == "model"  # type: ignore[attr-defined]


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_the_reason_holds_the_processor_needs_torchvision(tmp_path):
    """If this fails, transformers can build Qwen2VLProcessor without torchvision now: the refusal is
    stale and the Edit families can be built (easel.families.qwen_image_edit says how)."""
    from transformers import AutoProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor

    from easel.testing.tiny_qwen_image import VISION_TOKENS
    from easel.testing.tiny_qwen_tokenizer import build_qwen_tokenizer

    image_processor = Qwen2VLImageProcessor()  # the image half alone falls back to PIL
    assert type(image_processor).__name__ == "Qwen2VLImageProcessorPil"
    tokenizer = build_qwen_tokenizer(["cat"], extra_special=VISION_TOKENS)
    with pytest.raises(Exception, match=r"VIDEO_PROCESSOR_MAPPING|VideoProcessorMixin"):
        Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)  # video_processor=None
    tokenizer.save_pretrained(tmp_path)  # a processor folder as the Edit repos ship it
    image_processor.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    for load in (Qwen2VLProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(ImportError, match="Qwen2VLVideoProcessor requires the Torchvision"):
            load(tmp_path)


def test_python_door_refuses_before_loading(engine, edit_models, reference):
    request = GenerationRequest(model=EDIT_2509, prompt="make it blue", reference_images=[str(reference)])
    with pytest.raises(UnsupportedFeature) as refused:
        engine.generate(request)
    check_refusal(str(refused.value))


def test_http_doors_refuse_naming_why(hf_home, engine, edit_models, reference, tmp_path):
    from server_support import data_url, server

    with server(tmp_path, engine) as client:
        body = {"model": EDIT_2509, "prompt": "make it blue", "reference_images": [data_url(reference)]}
        native = client.post("/api/v1/generate", json=body)
        assert native.status_code == 422, native.text
        check_refusal(native.json()["error"]["message"])
        info = client.get("/api/v1/models/info", params={"model": EDIT_2509})
        assert info.status_code == 422 and "torchvision" in info.text, info.text
        # OpenAI's edits without a mask: not an edit-capable model here, so the refusal is the model's
        form = {"model": EDIT_2509, "prompt": "make it blue"}
        image = {"image": ("reference.png", reference.read_bytes(), "image/png")}
        openai = client.post("/v1/images/edits", files=image, data=form)
        assert openai.status_code == 422, openai.text
        check_refusal(openai.json()["error"]["message"])


def test_cli_edit_refuses_naming_why(edit_models, reference, tmp_path):
    from typer.testing import CliRunner

    from easel.cli import app

    out = str(tmp_path / "x.png")
    args = ["generate", "make it blue", "-m", EDIT_2509, "--edit", str(reference), "-o", out]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2, done.output
    assert "torchvision" in done.output and "QwenImageEditPlusPipeline" in done.output, done.output
