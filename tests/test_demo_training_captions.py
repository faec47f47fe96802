"""The demo UNet stage's caption mix (easel.demo.train._caption_plans / _caption_embeddings).

Why: the bundled model reads each colour from the colour word's own vectors only because its
training gave it context swaps and Compel-weighted two-colour captions; these tests pin that the
embeddings it trains on are exactly what those plans say (true vectors at the colour words and
the swapped caption's everywhere else; Compel's own weighting for `word++`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pytest

from easel.demo import shapes
from easel.demo.train import CaptionPlan, Settings, _caption_embeddings, _caption_plans, _captions, _token_ids


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    import torch

    from easel.demo.train import build_components

    torch.set_num_threads(1)
    return build_components(0)


def _scenes(count: int, seed: int = 5) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [asdict(shapes.random_scene(rng)) for _ in range(count)]


def test_the_mix_draws_each_kind_in_its_share() -> None:
    scenes = _scenes(2000)
    plans = _caption_plans(scenes, np.random.default_rng(0), Settings())
    swaps = [(p, s) for p, s in zip(plans, scenes, strict=True) if p.context is not None]
    weighted = [(p, s) for p, s in zip(plans, scenes, strict=True) if p.weighted_word is not None]
    assert abs(len(swaps) / 2000 - 0.25) < 0.03 and abs(len(weighted) / 2000 - 0.2) < 0.03
    for plan, scene in swaps:
        true, context = plan.text.split(), (plan.context or "").split()
        changed = [(t, c) for t, c in zip(true, context, strict=True) if t != c]
        # both colour words change, to colours that differ from each other in the context
        assert [t.strip(",") for t, _ in changed] == [
            w for w in plan.text.replace(",", "").split() if w in shapes.COLORS
        ]
        assert len(changed) == 2 and changed[0][1] != changed[1][1]
        assert {t.strip(",") for t, _ in changed} == {scene["color"], scene["background"]}
    for plan, scene in weighted:
        words = plan.text.replace(",", "").split()
        named = [w for w in words if w in shapes.COLORS]
        assert plan.weighted_word == scene["color"] and scene["background"] in named
        assert len(named) == 3 and len(set(named)) == 3
        assert 1.1 <= plan.weight <= 1.8


def test_without_the_mix_the_captions_are_the_plain_ones() -> None:
    scenes = _scenes(200)
    settings = replace(Settings(), context_swaps=0.0, weighted_captions=0.0)
    plans = _caption_plans(scenes, np.random.default_rng(1), settings)
    rng = np.random.default_rng(1)
    expected = []
    for scene in scenes:
        rng.random()  # the draw that picks the kind
        expected += _captions([scene], rng, settings, partial=True)
    assert [p.text for p in plans] == expected and all(p == CaptionPlan(p.text) for p in plans)


def test_a_swap_keeps_the_true_colour_words_and_the_context_elsewhere(components: dict[str, Any]) -> None:
    import torch

    plan = CaptionPlan("a red circle on a white background", context="a blue circle on a green background")
    with torch.no_grad():
        mixed = _caption_embeddings(components, [plan])[0]
        true, context = (
            components["text_encoder"](_token_ids(components, [t]))[0][0]
            for t in (plan.text, plan.context or "")
        )
    colour_positions = [2, 6]  # <bos> a RED circle on a WHITE background
    for position in range(mixed.shape[0]):
        expected = true if position in colour_positions else context
        torch.testing.assert_close(mixed[position], expected[position], rtol=0, atol=0)


def test_weighting_is_compels_upweighting(components: dict[str, Any]) -> None:
    import torch
    from compel import Compel

    compel = Compel(tokenizer=components["tokenizer"], text_encoder=components["text_encoder"])
    plan = CaptionPlan("a red blue circle on a white background", weighted_word="red", weight=1.1**2)
    with torch.no_grad():
        ours = _caption_embeddings(components, [plan])
        theirs = compel("a red++ blue circle on a white background")
        unweighted = components["text_encoder"](_token_ids(components, [plan.text]))[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    moved = (ours - unweighted).abs().amax(-1)[0]  # per position; only the word moves (rounding aside)
    assert moved[2] > 0.05
    assert moved[torch.arange(77) != 2].max() < 1e-5
