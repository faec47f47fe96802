"""Prompt weighting and long prompts, at the embedding level and end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER

from easel import Easel, GenerationRequest, InvalidRequest, Settings, UnsupportedFeature
from easel.prompts.encoding import PromptEncoder, TokenCount, plan_prompt

LONG_WORDS = (
    "a red circle on a blue background with a green square and a yellow triangle, " * 6
)  # > 77 tokens


@pytest.fixture(scope="module")
def sd15(engine):
    engine.generate(GenerationRequest(model=TINY_SD15, prompt="warm up", steps=1, seed=0))
    (loaded,) = [e for e in engine.cache.loaded() if e.source.location == TINY_SD15]
    return loaded


def encode(loaded, prompt: str, syntax: str = "compel", negative: str = ""):
    encoder = PromptEncoder(loaded.family.prompt_encoders(loaded.pipeline))
    return encoder.encode(plan_prompt(prompt, syntax), plan_prompt(negative, syntax))


def plain_embeds(loaded, prompt: str):
    embeds, _ = loaded.pipeline.encode_prompt(prompt, "cpu", 1, False)
    return embeds


def test_weight_one_equals_the_plain_embedding(sd15):
    weighted, *_ = encode(sd15, "a (red)1.0 circle")
    torch.testing.assert_close(weighted, plain_embeds(sd15, "a red circle"), rtol=0, atol=0)
    a1111, *_ = encode(sd15, "a (red:1.0) circle", "a1111")
    torch.testing.assert_close(a1111, plain_embeds(sd15, "a red circle"), rtol=0, atol=0)


def test_an_upweighted_word_changes_only_its_own_token_positions(sd15):
    plain = plain_embeds(sd15, "a red circle")
    weighted, *_ = encode(sd15, "a (red)1.5 circle")
    changed = (weighted - plain).abs().amax(dim=-1)[0]
    tokens = sd15.pipeline.tokenizer("a red circle").input_ids  # <start> a red circle <end>
    red_position = tokens.index(sd15.pipeline.tokenizer.convert_tokens_to_ids("red</w>"))
    assert changed[red_position] > 0
    others = [i for i in range(changed.shape[0]) if i != red_position]
    assert changed[others].max() == 0


def test_a1111_and_compel_spellings_give_the_same_embeddings(sd15):
    a1111, *_ = encode(sd15, "a (red:1.5) circle, [blue] square", "a1111")
    compel, *_ = encode(sd15, "a (red)1.5 circle, (blue)0.9091 square")
    torch.testing.assert_close(a1111, compel, rtol=0, atol=1e-4)


def test_long_prompts_are_chunked_and_padded_with_the_negative(sd15):
    embeds, negative, _, _ = encode(sd15, LONG_WORDS, negative="blurry")
    assert embeds.shape[1] == negative.shape[1] == 2 * 77


def test_break_starts_a_new_chunk(sd15):
    embeds, *_ = encode(sd15, "a red circle BREAK a blue square", "a1111")
    assert embeds.shape[1] == 2 * 77


def test_words_after_token_77_change_the_image(engine):
    def image(ending: str):
        request = GenerationRequest(model=TINY_SD15, prompt=LONG_WORDS + ending, steps=2, seed=5)
        return np.asarray(engine.generate(request).images[0])

    assert not np.array_equal(image("dog"), image("cat"))


def test_unweighted_short_prompts_take_the_pipelines_own_path(sd15):
    arguments: dict = {}
    request = GenerationRequest(prompt="a red circle", negative_prompt="blue")
    sd15.family.apply_prompts(sd15.pipeline, request, arguments, {})
    assert arguments == {"prompt": "a red circle", "negative_prompt": "blue"}
    weighted: dict = {"prompt": "x", "negative_prompt": None}
    sd15.family.apply_prompts(
        sd15.pipeline, request.model_copy(update={"prompt": "a red+ circle"}), weighted, {}
    )
    assert (
        "prompt" not in weighted
        and weighted["prompt_embeds"].shape == weighted["negative_prompt_embeds"].shape
    )


def test_repeated_prompts_are_encoded_once(sd15):
    state: dict = {}
    request = GenerationRequest(prompt="a (red)1.3 circle")
    first: dict = {}
    second: dict = {}
    sd15.family.apply_prompts(sd15.pipeline, request, first, state)
    sd15.family.apply_prompts(sd15.pipeline, request, second, state)
    assert first["prompt_embeds"] is second["prompt_embeds"]


def test_malformed_a1111_fails_before_loading_with_the_position(hf_home):
    fresh = Easel(Settings.from_env())
    with pytest.raises(InvalidRequest, match=r"invalid prompt: unbalanced '\(' at position 2"):
        fresh.generate(GenerationRequest(model=TINY_SD15, prompt="a (red circle", prompt_syntax="a1111"))
    with pytest.raises(InvalidRequest, match="invalid negative_prompt"):
        fresh.generate(
            GenerationRequest(model=TINY_SD15, prompt="a", negative_prompt="(x:abc)", prompt_syntax="a1111")
        )
    assert len(fresh.cache) == 0


def test_compel_syntax_warns_about_a1111_weights(engine):
    result = engine.generate(GenerationRequest(model=TINY_SD15, prompt="a (red:1.3) circle", steps=1, seed=0))
    assert any("--syntax a1111" in warning for warning in result.warnings)


def test_weighted_prompts_replay_byte_identically(engine, tmp_path):
    request = GenerationRequest(
        model=TINY_SD15, prompt="a ((red)) circle BREAK blue", negative_prompt="[green]",
        prompt_syntax="a1111", steps=2, seed=8,
    )  # fmt: skip
    result = engine.generate(request)
    path = result.save(tmp_path / "weighted.png")
    again, index = engine.replay(path)
    assert again.request.prompt == "a ((red)) circle BREAK blue" and again.request.prompt_syntax == "a1111"
    assert again.encode(index) == path.read_bytes()


def test_sdxl_weighted_and_long_prompts_use_both_encoders_and_pooled(engine, sdxl_models):
    engine.generate(GenerationRequest(model=TINY_SDXL, prompt="warm", steps=1, seed=0))
    (loaded,) = [e for e in engine.cache.loaded() if e.source.location == TINY_SDXL]
    arguments: dict = {}
    request = GenerationRequest(
        prompt=LONG_WORDS + " (red:1.4)", negative_prompt="dull", prompt_syntax="a1111"
    )
    loaded.family.apply_prompts(loaded.pipeline, request, arguments, {})
    width = (
        loaded.pipeline.text_encoder.config.hidden_size + loaded.pipeline.text_encoder_2.config.hidden_size
    )
    assert arguments["prompt_embeds"].shape == (1, 2 * 77, width)
    assert arguments["negative_prompt_embeds"].shape == arguments["prompt_embeds"].shape
    assert arguments["pooled_prompt_embeds"].shape == arguments["negative_pooled_prompt_embeds"].shape
    result = engine.generate(request.model_copy(update={"model": TINY_SDXL, "steps": 2, "seed": 1}))
    assert np.asarray(result.images[0]).std() > 0


def test_sdxl_refiner_hand_off_with_weighted_prompt(engine, sdxl_models):
    result = engine.generate(
        GenerationRequest(
            model=TINY_SDXL, refiner=TINY_SDXL_REFINER, refiner_at=0.5, prompt="a (red)1.3 circle",
            negative_prompt="blue", steps=4, seed=2,
        )
    )  # fmt: skip
    assert np.asarray(result.images[0]).std() > 0


def test_kandinsky_refuses_weights_but_takes_plain_text(engine, kandinsky_models):
    with pytest.raises(UnsupportedFeature, match=r"Kandinsky 2\.2 cannot honour"):
        engine.generate(GenerationRequest(model=TINY_KANDINSKY, prompt="a (red)1.5 cat"))
    plain = engine.generate(
        GenerationRequest(model=TINY_KANDINSKY, prompt="a (red) cat", prompt_syntax="plain", steps=2, seed=0,
                          prior_steps=2, width=64, height=64)
    )  # fmt: skip
    assert plain.request.prompt == "a (red) cat"


def test_token_counts(engine, hf_home):
    count = engine.count_tokens(LONG_WORDS, model=TINY_SD15)
    assert count.chunks == 2 and count.tokens > 75
    assert str(count) == f"{count.tokens}/150, 2 chunks"
    assert str(engine.count_tokens("a red circle", model=TINY_SD15)) == "3/75, 1 chunk"
    assert engine.count_tokens("a red BREAK circle", model=TINY_SD15, syntax="a1111").chunks == 2
    assert str(TokenCount(83, 2)) == "83/150, 2 chunks"
    # which tokenizer counted is said (the tiny and bundled models' vocabularies are small)
    assert count.counted_with == "stable-diffusion-v1-5" and 0 < count.vocabulary < 49408


@pytest.mark.slow
def test_cli_syntax_end_to_end_sd15_and_sdxl(hf_home, sdxl_models, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EASEL_THREADS": "1"}
    for model in (TINY_SD15, TINY_SDXL):
        done = subprocess.run(
            [sys.executable, "-m", "easel", "generate", "a (red:1.3) circle BREAK on blue", "-m", model,
             "--syntax", "a1111", "--steps", "2", "--seed", "1", "--json", "--no-gallery", "-o",
             str(tmp_path / "out.png")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["request"]["prompt_syntax"] == "a1111"
    bad = subprocess.run(
        [sys.executable, "-m", "easel", "generate", "a (red circle", "--syntax", "a1111"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "unbalanced '('" in bad.stderr


EQUIVALENCE_PROMPTS = [
    ("a1111", "a (red cat:1.3), on a [blue] sofa BREAK oil painting, 3.14 C++ code"),
    ("a1111", "masterpiece, (best quality), ((ultra detailed:1.2)), a,b,c, \\(literal\\) [[dim]]"),
    ("a1111", ""),
    ("plain", "a cat (photo) [x] BREAK y, z"),
    ("compel", "plain words, no syntax,at all. " * 4),
]


@pytest.mark.parametrize(("syntax", "prompt"), EQUIVALENCE_PROMPTS)
def test_prompts_easel_parsed_encode_exactly_as_compel_parsing_them(engine, sdxl_models, syntax, prompt):
    """A1111 and plain prompts reach Compel already parsed (its parser costs ~1 ms per
    character): the embeddings equal those of Compel parsing the translated text, for SD 1.5
    and for SDXL's two encoders and pooled output."""
    for model in (TINY_SD15, TINY_SDXL):
        engine.generate(GenerationRequest(model=model, prompt="warm", steps=1, seed=0))
        (loaded,) = [e for e in engine.cache.loaded() if e.source.location == model]
        encoder = PromptEncoder(loaded.family.prompt_encoders(loaded.pipeline))
        plan = plan_prompt(prompt, syntax)
        assert plan.fragments is not None
        with torch.inference_mode():
            parsed_by_easel = encoder._encode_chunks(plan.chunks, plan.fragments)
            parsed_by_compel = encoder._encode_chunks(plan.chunks, None)
        for ours, theirs in zip(parsed_by_easel, parsed_by_compel, strict=True):
            if theirs is None:
                assert ours is None
            else:
                assert torch.equal(ours, theirs)
