"""Prompt editing `[from:to:when]` and alternation `[a|b]`: A1111's schedule, switched during
the run, equal to a plain diffusers run that switches the same embeddings at the same steps."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from conftest import TINY_KANDINSKY, TINY_SD15, TINY_SDXL
from PIL import Image
from server_support import server

from easel import GenerationRequest, InvalidRequest, UnsupportedFeature
from easel.prompts.a1111 import PromptSyntaxError
from easel.prompts.checks import check_prompts
from easel.prompts.scheduling import every_branch, prompt_schedule, text_at

# A1111's own table (modules/prompt_parser.py doctests, 10 steps), which easel must reproduce
A1111_SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("[a|(b:1.1)]", [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]),
    ("[fe|]male", [(step, "female" if step % 2 else "male") for step in range(1, 11)]),
    ("[fe|||]male", [(step, "female" if step % 4 == 1 else "male") for step in range(1, 11)]),
]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULES)
def test_schedules_equal_a1111s(prompt, expected):
    assert prompt_schedule(prompt, "a1111", 10) == expected


@pytest.mark.parametrize(
    ("prompt", "steps", "per_step"),
    [
        ("[cat:dog:2]", 5, ["cat", "cat", "cat", "dog", "dog"]),  # A1111: the step index <= end_at_step
        ("[cat:dog:0.5]", 4, ["cat", "cat", "cat", "dog"]),
        ("[cat|dog]", 5, ["cat", "cat", "dog", "cat", "dog"]),
        ("[cat:dog:1.0]", 3, ["cat", "cat", "cat"]),  # a fraction of 1: never switches
        ("[cat:dog:0.01]", 3, ["dog", "dog", "dog"]),  # int(0.03) = 0: the second from the start
        ("[cat:dog:1e999]", 3, ["cat", "cat", "cat"]),
    ],
)
def test_the_text_of_each_step(prompt, steps, per_step):
    schedule = prompt_schedule(prompt, "a1111", steps)
    assert [text_at(schedule, index) for index in range(steps)] == per_step


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("a [unbalanced", "unbalanced '['"),
        ("[a:b]", "expected a number (when)"),
        ("[a:b:c:0.5]", "more than two ':'"),
        ("[a|b:0.5]", "':' and '|' mixed"),
        ("[a:b:x]", "expected a number (when)"),
    ],
)
def test_a1111_syntax_is_strict_where_a1111_would_draw_the_brackets_as_text(prompt, reason):
    with pytest.raises(PromptSyntaxError, match=re.escape(reason)):
        prompt_schedule(prompt, "a1111", 10)


def test_compel_syntax_reads_well_formed_edits_and_leaves_other_brackets_as_text():
    assert prompt_schedule("a [cat:dog:0.5] (x)1.2 [b c]", "compel", 4) == [
        (2, "a cat (x)1.2 [b c]"),
        (4, "a dog (x)1.2 [b c]"),
    ]
    assert prompt_schedule("[a:b] [c", "compel", 3) == [(3, "[a:b] [c")]
    assert prompt_schedule("[a:b:0.5]", "plain", 4) == [(4, "[a:b:0.5]")]


def test_every_branch_is_checked_at_the_door():
    assert every_branch("a [cat:(dog:1.2):0.5] [x|y]", "a1111") == "a cat (dog:1.2) x y"
    with pytest.raises(InvalidRequest) as raised:
        check_prompts(GenerationRequest(prompt="a [cat:(dog:abc):0.5]", prompt_syntax="a1111"))
    assert raised.value.field == "prompt" and "not a number" in str(raised.value)
    with pytest.raises(InvalidRequest) as raised:
        check_prompts(GenerationRequest(prompt="x", negative_prompt="[a:b]", prompt_syntax="a1111"))
    assert raised.value.field == "negative_prompt" and "expected a number (when)" in str(raised.value)


def switching_callback(embeds_per_step: list[dict]):
    """A plain diffusers step callback that hands the next step its conditioning."""

    def on_step_end(pipe, step, timestep, tensors):
        return embeds_per_step[step + 1] if step + 1 < len(embeds_per_step) else {}

    return on_step_end


def test_sd15_switches_conditioning_as_plain_diffusers_would(engine, hf_home):
    from diffusers import StableDiffusionPipeline

    steps, count = 4, 2
    request = GenerationRequest(
        model=TINY_SD15, prompt="a red [circle:square:2] on blue", negative_prompt="[dull|noisy]",
        prompt_syntax="a1111", steps=steps, seed=12, num_images=count,
    )  # fmt: skip
    ours = engine.generate(request)
    plain = StableDiffusionPipeline.from_pretrained(TINY_SD15)
    plain.set_progress_bar_config(disable=True)
    positives = prompt_schedule(request.prompt, "a1111", steps)
    negatives = prompt_schedule(request.negative_prompt, "a1111", steps)
    # one more than `steps`: the tiny model's PLMS evaluates the first step twice (5 calls for 4 steps)
    texts = [(text_at(positives, i), text_at(negatives, i)) for i in range(steps + 1)]
    assert len(set(texts)) == 4  # both prompts change, at different steps

    def conditioning(pair):
        positive, negative = plain.encode_prompt(pair[0], "cpu", count, True, negative_prompt=pair[1])
        return {"prompt_embeds": torch.cat([negative, positive])}

    first_positive, first_negative = plain.encode_prompt(texts[0][0], "cpu", 1, True, texts[0][1])
    expected = plain(
        prompt_embeds=first_positive,
        negative_prompt_embeds=first_negative,
        num_inference_steps=steps,
        num_images_per_prompt=count,
        generator=[torch.Generator("cpu").manual_seed(12 + i) for i in range(count)],
        callback_on_step_end=switching_callback([conditioning(pair) for pair in texts]),
    ).images
    for mine, theirs in zip(ours.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(mine), pixels(theirs))


def test_sdxl_switches_both_encoders_and_the_pooled_embedding(engine, sdxl_models):
    from diffusers import StableDiffusionXLPipeline

    steps = 3
    request = GenerationRequest(model=TINY_SDXL, prompt="[a red circle|a blue square]",
                                negative_prompt="dull", prompt_syntax="a1111", steps=steps,
                                seed=4)  # fmt: skip
    ours = engine.generate(request)
    plain = StableDiffusionXLPipeline.from_pretrained(sdxl_models[TINY_SDXL])
    plain.set_progress_bar_config(disable=True)
    schedule = prompt_schedule(request.prompt, "a1111", steps)
    texts = [text_at(schedule, index) for index in range(steps)]
    assert texts == ["a red circle", "a red circle", "a blue square"]

    def encoded(text):
        return plain.encode_prompt(text, device="cpu", do_classifier_free_guidance=True,
                                   negative_prompt="dull")  # fmt: skip

    def conditioning(text):
        positive, negative, pooled, negative_pooled = encoded(text)
        return {"prompt_embeds": torch.cat([negative, positive]),
                "add_text_embeds": torch.cat([negative_pooled, pooled])}  # fmt: skip

    positive, negative, pooled, negative_pooled = encoded(texts[0])
    expected = plain(
        prompt_embeds=positive, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=steps,
        generator=[torch.Generator("cpu").manual_seed(4)],
        callback_on_step_end=switching_callback([conditioning(text) for text in texts]),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(ours.images[0]), pixels(expected))


def test_an_edit_differs_from_either_side_and_replays_byte_identically(engine, tmp_path):
    base = {"model": TINY_SD15, "steps": 4, "seed": 3, "prompt_syntax": "a1111"}
    edited = engine.generate(GenerationRequest(prompt="a [red circle:blue square:0.5]", **base))
    for alone in ("a red circle", "a blue square"):
        other = engine.generate(GenerationRequest(prompt=alone, **base))
        assert not np.array_equal(pixels(edited.images[0]), pixels(other.images[0])), alone
    path = edited.save(tmp_path / "edited.png")
    again, index = engine.replay(path)
    assert again.request.prompt == "a [red circle:blue square:0.5]"
    assert again.encode(index) == path.read_bytes()


def test_img2img_counts_the_steps_it_runs(engine, init_png):
    """img2img runs int(steps x strength) steps; the schedule is over `steps`, indexed by the
    steps run (as A1111's img2img): [a:b:1] switches after the run's second step."""
    base = {"model": TINY_SD15, "steps": 4, "strength": 0.75, "seed": 9, "init_image": str(init_png),
            "prompt_syntax": "a1111"}  # fmt: skip
    edited = engine.generate(GenerationRequest(prompt="[a red circle:a blue square:1]", **base))
    first = engine.generate(GenerationRequest(prompt="a red circle", **base))
    assert not np.array_equal(pixels(edited.images[0]), pixels(first.images[0]))
    never = engine.generate(GenerationRequest(prompt="[a red circle:a blue square:4]", **base))
    np.testing.assert_array_equal(pixels(never.images[0]), pixels(first.images[0]))


def test_kandinsky_refuses_prompt_editing_by_field(engine, kandinsky_models):
    with pytest.raises(UnsupportedFeature, match="prompt editing or alternation") as raised:
        engine.generate(GenerationRequest(model=TINY_KANDINSKY, prompt="[a|b]", prompt_syntax="a1111"))
    assert raised.value.field == "prompt"


def test_token_counts_take_the_longest_step(engine, hf_home):
    short, long = "a cat", "a cat " + "with a very long tail " * 20
    count = engine.count_tokens(f"[{short}:{long}:0.5]", model=TINY_SD15, syntax="a1111")
    assert count == engine.count_tokens(long, model=TINY_SD15, syntax="a1111")


def test_a1111_door_accepts_editing_and_refuses_a_malformed_one(engine, hf_home, tmp_path):
    body = {"steps": 2, "seed": 5, "width": 64, "height": 64,
            "override_settings": {"sd_model_checkpoint": TINY_SD15}}  # fmt: skip
    with server(tmp_path, engine) as client:
        answer = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a [red|blue] circle"})
        assert answer.status_code == 200, answer.text
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert image.size == (64, 64)
        bad = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a [red:blue] circle"})
        assert bad.status_code == 422 and bad.json()["field"] == "prompt", bad.text
