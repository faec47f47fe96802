"""Textual-inversion embeddings: A1111 .safetensors (emb_params, SDXL clip_l/clip_g) and classic
.pt files made here for the tiny models; parity with plain diffusers' load_textual_inversion,
prompts without them unchanged after loading, both encoding paths alike, token counts, records,
the HTTP listings and refusals naming the file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER
from PIL import Image

from easel import Easel, GenerationRequest, InvalidRequest, Settings, UnsupportedFeature


class NotATensor:
    """Pickled into a .pt, it needs code to load: weights-only loading refuses it."""


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def text_width(model: str, subfolder: str = "text_encoder") -> int:
    from transformers import CLIPTextConfig

    return int(CLIPTextConfig.from_pretrained(model, subfolder=subfolder).hidden_size)


@pytest.fixture(scope="module")
def embedding_dir(hf_home, sdxl_models, tmp_path_factory) -> Path:
    """Tiny embeddings: A1111 .safetensors (2 vectors), A1111's classic .pt (3 vectors, with and
    without its bookkeeping keys), SDXL clip_l/clip_g, and two files easel cannot read."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(5)
    width = text_width(TINY_SD15)
    save_file({"emb_params": torch.randn(2, width, generator=generator)}, folder / "emb-two.safetensors")
    classic = torch.nn.Parameter(torch.randn(3, width, generator=generator))
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": classic}, "name": "classic",
         "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None},
        folder / "classic.pt",
    )  # fmt: skip
    (folder / "sub").mkdir()
    torch.save(
        {"string_to_param": {"*": torch.randn(1, width, generator=generator)}}, folder / "sub" / "bare.pt"
    )
    save_file(
        {
            "clip_l": torch.randn(2, text_width(TINY_SDXL), generator=generator),
            "clip_g": torch.randn(2, text_width(TINY_SDXL, "text_encoder_2"), generator=generator),
        },
        folder / "xl_style.safetensors",
    )
    torch.save({"string_to_param": {"*": NotATensor()}}, folder / "coded.pt")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    return folder


@pytest.fixture(scope="module")
def ti_engine(embedding_dir, tmp_path_factory) -> Easel:
    """An engine of its own (its own pipeline cache), finding embeddings in embedding_dir."""
    return Easel(Settings.from_env(embeddings_dir=embedding_dir, home=tmp_path_factory.mktemp("ti-home")))


def request(prompt: str, model: str = TINY_SD15, **fields) -> GenerationRequest:
    return GenerationRequest(**{"model": model, "prompt": prompt, "steps": 3, "seed": 11, **fields})


def plain_with(model: str, folder: Path, names: list[str], prompt: str):
    """The same prompt with plain diffusers, each embedding loaded under its own name."""
    from diffusers import AutoPipelineForText2Image
    from safetensors.torch import load_file

    pipe = AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    for name in names:
        path = next(folder.glob(f"{name}.*"))
        if model == TINY_SDXL:  # as diffusers' documentation loads an SDXL embedding
            state = load_file(path)
            pipe.load_textual_inversion(
                state["clip_l"], token=name, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
            )
            pipe.load_textual_inversion(
                state["clip_g"], token=name, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
            )
        else:
            pipe.load_textual_inversion(str(path), token=name)
    return pipe(prompt, num_inference_steps=3, generator=[torch.Generator("cpu").manual_seed(11)]).images[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "model, name",
    [(TINY_SD15, "emb-two"), (TINY_SD15, "classic"), (TINY_SDXL, "xl_style")],
    ids=["sd15-safetensors", "sd15-classic-pt", "sdxl"],
)
def test_embeddings_equal_plain_diffusers_textual_inversion(ti_engine, embedding_dir, model, name):
    prompt = f"a red {name} circle"
    result = ti_engine.generate(request(prompt, model))
    expected = plain_with(model, embedding_dir, [name], prompt)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    without = ti_engine.generate(request("a red circle", model))
    assert np.abs(pixels(result.images[0]) - pixels(without.images[0])).mean() > 1  # it did something
    path = next(embedding_dir.glob(f"{name}.*"))
    assert result.model_hashes[f"ti:{name}"] == sha256(path)
    assert f'TI hashes: "{name}: {sha256(path)[:12]}"' in result.parameters()
    assert result.request.prompt == prompt  # the record keeps the name, not easel's token


def test_prompts_without_embeddings_are_unchanged_after_loading(ti_engine, embedding_dir, tmp_path):
    prompts = ["a red circle", "a (red)1.3 circle", "an emb-twofold classical circle"]  # names only as words
    fresh = Easel(Settings.from_env(home=tmp_path))  # a process that never loaded an embedding
    expected = [fresh.generate(request(prompt)).images[0] for prompt in prompts]
    ti_engine.generate(request("a (emb-two)1.2 classic circle", negative_prompt="sub bare"))
    for prompt, image in zip(prompts, expected, strict=True):
        made = ti_engine.generate(request(prompt))
        np.testing.assert_array_equal(pixels(made.images[0]), pixels(image))
        assert not any(key.startswith("ti:") for key in made.model_hashes)
        assert "TI hashes" not in made.parameters()


@pytest.mark.parametrize("model", [TINY_SD15, TINY_SDXL], ids=["sd15", "sdxl"])
def test_the_pipeline_and_compel_paths_give_the_same_embeddings(ti_engine, model):
    from easel.models.embeddings import ACTIVE_KEY, for_encoding
    from easel.prompts.encoding import PromptEncoder, plan_prompt

    name = "xl_style" if model == TINY_SDXL else "emb-two"
    ti_engine.generate(request(f"a {name} circle", model))
    loaded = next(m for m in ti_engine.cache.loaded() if m.source.location == model)
    text = for_encoding(f"a {name} circle", loaded.state[ACTIVE_KEY])
    assert name not in text and "easelti" in text
    pipe = loaded.pipeline
    encoded = pipe.encode_prompt(
        text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    encoder = PromptEncoder(loaded.family.prompt_encoders(pipe))
    for spelled, syntax in ((text, "compel"), (f"a ({name}:1.0) circle", "a1111")):
        spelled = for_encoding(spelled, loaded.state[ACTIVE_KEY])
        embeds, _, pooled, _ = encoder.encode(plan_prompt(spelled, syntax), plan_prompt("", syntax))
        torch.testing.assert_close(embeds, encoded[0], rtol=0, atol=0)
        if model == TINY_SDXL:  # (embeds, negative, pooled, negative pooled)
            torch.testing.assert_close(pooled, encoded[2], rtol=0, atol=0)


def test_weighted_prompts_with_embeddings(ti_engine):
    compel = ti_engine.generate(request("a (emb-two)1.3 circle"))
    a1111 = ti_engine.generate(request("a (emb-two:1.3) circle", prompt_syntax="a1111"))
    plain = ti_engine.generate(request("a emb-two circle"))
    np.testing.assert_array_equal(pixels(compel.images[0]), pixels(a1111.images[0]))
    assert not np.array_equal(pixels(compel.images[0]), pixels(plain.images[0]))
    negative = ti_engine.generate(
        request("a circle", negative_prompt="(classic:0.8), blurry", prompt_syntax="a1111")
    )
    assert negative.model_hashes.keys() >= {"ti:classic"}


def test_token_counts_include_every_vector(ti_engine, tmp_path):
    base = ti_engine.count_tokens("a red circle", model=TINY_SD15).tokens
    assert ti_engine.count_tokens("a red emb-two circle", model=TINY_SD15).tokens == base + 2
    assert (
        ti_engine.count_tokens("a red (classic:1.2) circle", model=TINY_SD15, syntax="a1111").tokens
        == base + 3
    )
    assert ti_engine.count_tokens("a red CLASSIC circle emb-two", model=TINY_SD15).tokens == base + 5
    as_text = Easel(Settings.from_env(home=tmp_path)).count_tokens("a red coded circle", model=TINY_SD15)
    assert ti_engine.count_tokens("a red coded circle", model=TINY_SD15) == as_text  # unreadable: its text


def test_vectors_count_towards_the_75_token_window(ti_engine):
    """73 one-token words + a 3-vector embedding pass 75 tokens: chunked by Compel, not truncated."""
    ti_engine.generate(request("classic"))
    loaded = next(m for m in ti_engine.cache.loaded() if m.source.location == TINY_SD15)
    for words, chunked in ((72, False), (73, True)):
        arguments: dict = {}
        loaded.family.apply_prompts(
            loaded.pipeline, request("red " * words + "classic"), arguments, loaded.state
        )
        assert ("prompt_embeds" in arguments) == chunked
        if chunked:
            assert arguments["prompt_embeds"].shape[1] == 154


def test_sdxl_refiner_takes_the_clip_g_vectors(ti_engine, sdxl_models):
    fields = {"refiner": TINY_SDXL_REFINER, "refiner_at": 0.5, "steps": 4}
    made = ti_engine.generate(request("a xl_style circle", TINY_SDXL, **fields))
    without = ti_engine.generate(request("a circle", TINY_SDXL, **fields))
    assert not np.array_equal(pixels(made.images[0]), pixels(without.images[0]))
    refiner = next(m for m in ti_engine.cache.loaded() if m.family.name == "sdxl_refiner")
    token = made.model_hashes["ti:xl_style"][:12]
    assert f"easelti{token}" in refiner.pipeline.tokenizer_2.added_tokens_encoder


def test_a_changed_file_loads_as_a_new_token_and_replay_refuses_it(embedding_dir, tmp_path):
    folder = tmp_path / "embeddings"
    shutil.copytree(embedding_dir, folder)
    engine = Easel(Settings.from_env(embeddings_dir=folder, home=tmp_path / "home"))
    first = engine.generate(request("a emb-two circle"))
    saved = first.save(tmp_path / "made.png")
    replayed, _ = engine.replay(saved)
    np.testing.assert_array_equal(pixels(replayed.images[0]), pixels(first.images[0]))
    from safetensors.torch import save_file

    save_file({"emb_params": torch.ones(2, text_width(TINY_SD15))}, folder / "emb-two.safetensors")
    with pytest.raises(InvalidRequest, match=r"embedding 'emb-two' has sha256 .*the file changed") as caught:
        engine.replay(saved)
    assert caught.value.field == "prompt"
    second = engine.generate(request("a emb-two circle"))
    fresh = Easel(Settings.from_env(embeddings_dir=folder, home=tmp_path / "fresh")).generate(
        request("a emb-two circle")
    )
    assert not np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
    np.testing.assert_array_equal(pixels(second.images[0]), pixels(fresh.images[0]))
    assert first.model_hashes["ti:emb-two"] != second.model_hashes["ti:emb-two"]


@pytest.mark.parametrize(
    "fields, error, match, field",
    [
        ({"prompt": "a coded"}, InvalidRequest, r"coded\.pt cannot be read with weights-only", "prompt"),
        (
            {"negative_prompt": "broken"},
            InvalidRequest,
            r"broken\.safetensors is not a readable",
            "negative_prompt",
        ),
        ({"prompt": "a xl_style"}, InvalidRequest, r"xl_style\.safetensors is made for SDXL", "prompt"),
        ({"prompt": "a classic", "model": TINY_SDXL}, InvalidRequest, "made for one text encoder", "prompt"),
        ({"prompt": "a classic", "model": TINY_KANDINSKY}, UnsupportedFeature, "kandinsky22 models", None),
    ],
    ids=["pickle-with-code", "broken-safetensors", "sdxl-on-sd15", "sd15-on-sdxl", "kandinsky"],
)
def test_refusals_name_the_field_and_file(ti_engine, kandinsky_models, fields, error, match, field):
    fields = {**request("a circle").model_dump(exclude_defaults=True), **fields}
    with pytest.raises(error, match=match) as caught:
        ti_engine.generate(GenerationRequest(**fields))
    if field is not None:
        assert caught.value.field == field
    assert str(ti_engine.settings.embeddings_folder) not in str(caught.value)


def test_listings(ti_engine, embedding_dir, tmp_path):
    from server_support import server

    with server(tmp_path, ti_engine, embeddings_dir=embedding_dir) as client:
        a1111 = client.get("/sdapi/v1/embeddings")
        native = client.get("/api/v1/embeddings")
        refreshed = client.post("/sdapi/v1/refresh-embeddings")
        counted = client.post("/api/v1/tokens", json={"prompt": "a emb-two", "model": TINY_SD15})
    assert a1111.status_code == native.status_code == refreshed.status_code == 200, a1111.text
    assert refreshed.json() is None
    listed = a1111.json()
    width = text_width(TINY_SD15)
    xl_width = text_width(TINY_SDXL) + text_width(TINY_SDXL, "text_encoder_2")
    none = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
    assert listed["loaded"] == {
        "emb-two": {**none, "shape": width, "vectors": 2},
        "classic": {**none, "shape": width, "vectors": 3},
        "bare": {**none, "shape": width, "vectors": 1},
        "xl_style": {**none, "shape": xl_width, "vectors": 2},
    }
    assert set(listed["skipped"]) == {"coded", "broken"}
    assert "weights-only" in listed["skipped"]["coded"]["reason"]
    assert str(embedding_dir) not in a1111.text
    entries = {entry["name"]: entry for entry in native.json()}
    assert set(entries) == {"emb-two", "classic", "bare", "xl_style"}
    assert entries["xl_style"]["family"] == "sdxl" and entries["classic"]["vectors"] == 3
    assert entries["emb-two"]["sha256"] == sha256(embedding_dir / "emb-two.safetensors")
    assert set(entries["bare"]) == {"name", "vectors", "width", "family", "sha256"}
    assert counted.status_code == 200 and counted.json()["tokens"] == 3, counted.text


@pytest.mark.slow  # three CLI processes
def test_cli_listing(embedding_dir, tmp_path):
    import json

    from test_cli import run_easel

    home = tmp_path / "home"
    shutil.copytree(embedding_dir, home / "embeddings")
    listing = run_easel("embeddings", home=home)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VECTORS", "FAMILY", "HASH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    digest = sha256(embedding_dir / "emb-two.safetensors")
    assert rows["emb-two"][1] == "2" and rows["emb-two"][-1] == digest[:12]
    assert rows["xl_style"][2] == "sdxl" and rows["classic"][1] == "3"
    assert "unusable:" in rows["coded"] and "weights-only" in " ".join(rows["coded"])
    as_json = run_easel("embeddings", "--json", home=home)
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert listed["folder"] == str(home / "embeddings")
    entries = {entry["name"]: entry for entry in listed["embeddings"]}
    assert set(entries) == {"emb-two", "classic", "bare", "xl_style", "coded", "broken"}
    assert entries["emb-two"]["sha256"] == digest and entries["broken"]["error"]
    empty = run_easel("embeddings", home=tmp_path / "empty")
    assert empty.returncode == 0 and empty.stdout.startswith("no embeddings in ")
