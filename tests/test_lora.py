"""LoRAs on the cached base: parity with plain diffusers (PEFT and Kohya layouts, SD 1.5 and
SDXL), weight 0 and "no LoRA after LoRAs" byte-identical to a model that never had one, base
weights never fused, A1111 tags, records and replay, the adapter bound, refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL
from PIL import Image

from easel import Easel, GenerationRequest, InvalidRequest, ModelNotFound, Settings, UnsupportedFeature


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def lora_dir(hf_home, sdxl_models, tmp_path_factory) -> Path:
    """LoRA files for the tiny models: PEFT and Kohya layouts, SD 1.5 and SDXL."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from easel.testing.tiny_loras import write_tiny_lora

    folder = tmp_path_factory.mktemp("loras")
    sd15 = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    write_tiny_lora(sd15, folder / "peft.safetensors", layout="peft", seed=1)
    write_tiny_lora(sd15, folder / "kohya.safetensors", layout="kohya", seed=2)
    write_tiny_lora(sd15, folder / "styles" / "third.safetensors", layout="peft", seed=3, text_encoders=False)
    sdxl = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL)
    write_tiny_lora(sdxl, folder / "xl-peft.safetensors", layout="peft", seed=4)
    write_tiny_lora(sdxl, folder / "xl-kohya.safetensors", layout="kohya", seed=5)
    return folder


@pytest.fixture(scope="module")
def lora_engine(lora_dir, tmp_path_factory) -> Easel:
    """An engine of its own (its own pipeline cache), finding LoRAs in lora_dir."""
    return Easel(Settings.from_env(lora_dir=lora_dir, home=tmp_path_factory.mktemp("lora-home")))


def request(model: str = TINY_SD15, **fields) -> GenerationRequest:
    return GenerationRequest(model=model, prompt="a red circle", steps=3, seed=11, **fields)


def plain_with(model: str, lora_dir: Path, adapters: dict[str, float]):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    for name in adapters:
        path = lora_dir / f"{name}.safetensors"
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name.replace("/", "_"))
    if adapters:  # in easel's canonical order: by the files' sha256

        def sha(name: str) -> str:
            return hashlib.sha256((lora_dir / f"{name}.safetensors").read_bytes()).hexdigest()

        ordered = sorted(adapters, key=sha)
        pipe.set_adapters(
            [n.replace("/", "_") for n in ordered], adapter_weights=[adapters[n] for n in ordered]
        )
    return pipe(
        "a red circle", num_inference_steps=3, generator=[torch.Generator("cpu").manual_seed(11)]
    ).images[0]


@pytest.mark.parametrize(
    "model, loras",
    [
        (TINY_SD15, {"peft": 0.8}),
        (TINY_SD15, {"kohya": 1.0}),
        (TINY_SD15, {"peft": 0.7, "kohya": -0.5}),
        (TINY_SDXL, {"xl-peft": 1.0}),
        (TINY_SDXL, {"xl-kohya": 0.6}),
    ],
    ids=["sd15-peft", "sd15-kohya", "sd15-two", "sdxl-peft", "sdxl-kohya"],
)
def test_loras_equal_plain_diffusers_adapters(lora_engine, lora_dir, model, loras):
    specs = [{"name": name, "weight": weight} for name, weight in loras.items()]
    result = lora_engine.generate(request(model, loras=specs))
    expected = plain_with(model, lora_dir, loras)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    without = plain_with(model, lora_dir, {})
    assert np.abs(pixels(result.images[0]) - pixels(without)).mean() > 1  # the LoRA did something
    assert [lora.sha256 for lora in result.request.loras] == [
        hashlib.sha256((lora_dir / f"{name}.safetensors").read_bytes()).hexdigest() for name in loras
    ]


def test_switching_never_touches_the_base_weights(lora_engine, tmp_path):
    fresh = Easel(Settings.from_env(home=tmp_path)).generate(request())  # a process that never had a LoRA
    before = lora_engine.generate(request())
    source = lora_engine.resolve_model(TINY_SD15)
    loaded = next(m for m in lora_engine.cache.loaded() if m.source == source)
    weights = {name: (p, p.detach().clone()) for name, p in loaded.pipeline.unet.named_parameters()}
    made = {
        "zero": lora_engine.generate(request(loras=[{"name": "peft", "weight": 0.0}])),
        "one": lora_engine.generate(
            request(loras=[{"name": "peft"}, {"name": "styles/third", "weight": 0.5}])
        ),
        "swapped": lora_engine.generate(
            request(loras=[{"name": "styles/third", "weight": 0.5}, {"name": "peft"}])
        ),
        "none": lora_engine.generate(request()),
    }
    for result in (before, made["zero"], made["none"]):
        np.testing.assert_array_equal(pixels(result.images[0]), pixels(fresh.images[0]))
    # adapters are applied in a canonical order: the set of LoRAs decides the image
    np.testing.assert_array_equal(pixels(made["one"].images[0]), pixels(made["swapped"].images[0]))
    assert not np.array_equal(pixels(made["one"].images[0]), pixels(fresh.images[0]))
    # the base layers PEFT wraps are the very tensors loaded, unchanged (never fused)
    for name, parameter in loaded.pipeline.unet.named_parameters():
        if "lora_" in name:
            continue
        original, copy = weights.get(name) or weights[name.replace(".base_layer", "")]
        assert parameter is original and torch.equal(parameter, copy)


def test_text_encoder_loras_are_part_of_the_prompt_cache_key(lora_engine):
    weighted = dict(prompt="a (red)1.3 circle")  # Compel-encoded, so the encoder's cache is used
    plain = lora_engine.generate(request().model_copy(update=weighted))
    with_lora = lora_engine.generate(request(loras=[{"name": "peft"}]).model_copy(update=weighted))
    again = lora_engine.generate(request().model_copy(update=weighted))
    assert not np.array_equal(pixels(plain.images[0]), pixels(with_lora.images[0]))
    np.testing.assert_array_equal(pixels(plain.images[0]), pixels(again.images[0]))


def test_a1111_tags_move_into_loras_and_are_written_back(lora_engine):
    tagged = lora_engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle <lora:kohya:0.8>", prompt_syntax="a1111", steps=3, seed=11
        )
    )
    field = lora_engine.generate(
        GenerationRequest(
            model=TINY_SD15, prompt="a red circle ", prompt_syntax="a1111", steps=3, seed=11,
            loras=[{"name": "kohya", "weight": 0.8}],
        )
    )  # fmt: skip
    np.testing.assert_array_equal(pixels(tagged.images[0]), pixels(field.images[0]))
    assert tagged.request.prompt == "a red circle " and tagged.request.loras[0].weight == 0.8
    parameters = tagged.parameters()
    assert parameters.startswith("a red circle  <lora:kohya:0.8>\n")
    from easel.models.lora import addnet_hash

    short = addnet_hash(lora_engine.settings.loras_folder / "kohya.safetensors")[:12]
    assert f'Lora hashes: "kohya: {short}"' in parameters


def test_replay_checks_the_lora_file(lora_engine, lora_dir, tmp_path):
    import shutil

    folder = tmp_path / "loras"
    shutil.copytree(lora_dir, folder)
    engine = Easel(Settings.from_env(lora_dir=folder, home=tmp_path / "home"))
    result = engine.generate(request(loras=[{"name": "peft", "weight": 0.9}]))
    saved = result.save(tmp_path / "made.png")
    replayed, _ = engine.replay(saved)
    np.testing.assert_array_equal(pixels(replayed.images[0]), pixels(result.images[0]))
    shutil.copy(folder / "kohya.safetensors", folder / "peft.safetensors")  # same name, other weights
    with pytest.raises(InvalidRequest, match=r"loras\[0\]\.name='peft'.*sha256") as caught:
        engine.replay(saved)
    assert caught.value.field == "loras[0].name"


def test_adapters_per_base_are_bounded(lora_engine, monkeypatch):
    from easel.models import lora

    monkeypatch.setattr(lora, "MAX_ADAPTERS", 2)
    for name in ("peft", "kohya", "styles/third", "peft"):
        lora_engine.generate(request(loras=[{"name": name}]))
    source = lora_engine.resolve_model(TINY_SD15)
    loaded = next(m for m in lora_engine.cache.loaded() if m.source == source)
    assert len(loaded.state["lora_adapters"]) == 2
    assert len(loaded.pipeline.get_list_adapters()["unet"]) == 2


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"loras": [{"name": "missing"}]}, ModelNotFound, r"loras\[0\]\.name='missing': no such LoRA"),
        ({"loras": [{"name": "xl-peft"}]}, InvalidRequest, r"made for cross-attention 64 models.*reads 32"),
        ({"loras": [{"name": "peft"}], "model": TINY_KANDINSKY}, UnsupportedFeature, "take no LoRA"),
        ({"prompt": "a <lora:peft:1>"}, InvalidRequest, "A1111 syntax, which Compel prompts do not read"),
    ],
    ids=["unknown", "other-family", "kandinsky", "tag-in-compel"],
)
def test_refusals_name_the_field(lora_engine, kandinsky_models, fields, error, match):
    with pytest.raises(error, match=match):
        lora_engine.generate(GenerationRequest(**{**request().model_dump(exclude_defaults=True), **fields}))


def test_pickled_loras_need_allow_pickle(lora_engine, lora_dir, tmp_path):
    from easel.models.lora import resolve_lora

    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"not really")
    with pytest.raises(InvalidRequest, match="pickle that can run code"):
        resolve_lora("old", folder=tmp_path, allow_pickle=False, field="loras[0].name")
    assert resolve_lora("old", folder=tmp_path, allow_pickle=True, field="x") == pickle.resolve()


def test_listing_names_family_and_hashes(lora_dir):
    from easel.models.lora import list_loras

    entries = {entry["name"]: entry for entry in list_loras(lora_dir)}
    assert set(entries) - {"easel-demo-outline"} == {"peft", "kohya", "styles/third", "xl-peft", "xl-kohya"}
    assert entries["kohya"]["family"] == entries["peft"]["family"] == "cross-attention 32"
    assert len(entries["peft"]["hash"]) == 12 and len(entries["peft"]["sha256"]) == 64


def test_http_doors_take_loras_by_name_and_list_them(lora_engine, lora_dir, tmp_path):
    import base64
    import io

    from server_support import server

    direct = lora_engine.generate(request(loras=[{"name": "kohya", "weight": 0.8}])).images[0]
    with server(tmp_path, lora_engine, lora_dir=lora_dir) as client:
        native = client.post(
            "/api/v1/generate?include_images=true",
            json={"model": TINY_SD15, "prompt": "a red circle", "steps": 3, "seed": 11,
                  "loras": [{"name": "kohya", "weight": 0.8}]},
        )  # fmt: skip
        assert native.status_code == 200, native.text
        a1111 = client.post(
            "/sdapi/v1/txt2img",
            json={"prompt": "a red circle <lora:kohya:0.8>", "steps": 3, "seed": 11, "cfg_scale": 7.5,
                  "sampler_name": "PNDM", "override_settings": {"sd_model_checkpoint": TINY_SD15}},
        )  # fmt: skip
        assert a1111.status_code == 200, a1111.text
        listed = client.get("/api/v1/loras").json()
        a1111_listed = client.get("/sdapi/v1/loras").json()
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        refused = [
            client.post("/api/v1/jobs", json={"prompt": "x", "loras": [{"name": name}]})
            for name in (str(lora_dir / "peft.safetensors"), "../loras/peft", "nope")
        ]
    served = Image.open(io.BytesIO(base64.b64decode(native.json()["images"][0]["b64_png"])))
    np.testing.assert_array_equal(pixels(served), pixels(direct))
    assert "Lora hashes" in native.json()["images"][0]["parameters"]
    a1111_image = Image.open(io.BytesIO(base64.b64decode(a1111.json()["images"][0])))
    assert a1111_image.size == (64, 64)
    assert '"loras"' not in a1111.json()["info"] or "kohya" in a1111.json()["info"]
    names = {entry["name"] for entry in listed} - {"easel-demo-outline"}  # the bundled one, when built
    assert names == {"peft", "kohya", "styles/third", "xl-peft", "xl-kohya"}
    assert all(set(entry) == {"name", "family", "hash", "sha256"} for entry in listed)
    assert {"name": "kohya", "alias": "kohya", "path": "kohya.safetensors", "metadata": {}} in a1111_listed
    for answer in refused:
        assert answer.status_code == 422, answer.text
        assert "loras[0].name" in answer.text and str(tmp_path) not in answer.text


@pytest.mark.slow  # four CLI processes
def test_cli_lora_flag_and_listing(hf_home, lora_dir, tmp_path):
    import json
    import shutil

    from test_cli import run_easel

    home = tmp_path / "home"
    shutil.copytree(lora_dir, home / "loras")
    out = tmp_path / "out.png"
    done = run_easel(
        "generate", "a red circle", "-m", TINY_SD15, "--steps", "3", "--seed", "11", "--lora", "peft:0.8",
        "--lora", "styles/third", "--no-gallery", "-o", str(out), "--json", home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    loras = json.loads(done.stdout)["request"]["loras"]
    assert [(lora["name"], lora["weight"]) for lora in loras] == [("peft", 0.8), ("styles/third", 1.0)]
    listing = run_easel("loras", home=home)
    assert listing.returncode == 0 and listing.stdout.splitlines()[0].split() == ["NAME", "FAMILY", "HASH"]
    assert "styles/third" in listing.stdout
    bad = run_easel("generate", "x", "-m", TINY_SD15, "--lora", "nothing:0.5", home=home)
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid --lora='nothing:0.5': "), bad.stderr
    heavy = run_easel("generate", "x", "-m", TINY_SD15, "--lora", "peft:3", home=home)
    assert heavy.returncode == 2 and "invalid --lora='peft:3' (weight)" in heavy.stderr, heavy.stderr
