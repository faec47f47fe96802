"""A1111's extra-network tags: `<lora:name:weight>` read out of a prompt.

A1111 removes every `<kind:args>` tag from the prompt text before encoding and applies the
networks they name; the text encoder never sees the tag. easel does the same for prompts in
A1111 syntax: LoRA tags become entries of the request's `loras` and leave the text. Kinds
easel cannot apply (hypernetworks) are refused, naming the tag, rather than drawn as text.
The A1111 forms read: `<lora:name>` (weight 1), `<lora:name:0.8>`, and `<lyco:...>`, which
A1111 treats as `<lora:...>`. Per-part weights (`<lora:name:1:0.5>`, `te=`, `unet=`) are
refused: a LoRA here has one weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A1111's own pattern (modules/extra_networks.py): a word, a colon, anything but '>'
TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:...>` tag: the LoRA's name and weight, and the tag as written."""

    name: str
    weight: float
    text: str


class TagError(ValueError):
    """A tag easel cannot honour; the message names it."""


def has_tags(prompt: str) -> bool:
    return TAG.search(prompt) is not None


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its LoRA tags, the tags in order). Like A1111, a tag is replaced by
    nothing, so the text around it is kept as written ("a cat, <lora:x:1>" -> "a cat, ")."""
    tags: list[LoraTag] = []

    def take(match: re.Match[str]) -> str:
        kind, arguments = match.group(1), match.group(2)
        if kind not in LORA_KINDS:
            raise TagError(
                f"extra-network tag {match.group(0)!r} is not supported (easel reads <lora:name:weight>)"
            )
        tags.append(_lora_tag(match.group(0), arguments))
        return ""

    return TAG.sub(take, prompt), tags


def _lora_tag(text: str, arguments: str) -> LoraTag:
    name, *rest = (part.strip() for part in arguments.split(":"))
    if not name:
        raise TagError(f"{text!r} names no LoRA")
    if len(rest) > 1 or any("=" in part for part in rest):
        raise TagError(
            f"{text!r}: separate text-encoder/UNet weights are not supported; give one weight "
            "(<lora:name:0.8>)"
        )
    weight = 1.0
    if rest:
        try:
            weight = float(rest[0])
        except ValueError:
            raise TagError(f"{text!r}: the weight {rest[0]!r} is not a number") from None
        if not math.isfinite(weight):
            raise TagError(f"{text!r}: the weight must be a finite number")
    return LoraTag(name, weight, text)


def lora_tag(name: str, weight: float) -> str:
    """How A1111 writes a LoRA into a prompt (used for the `parameters` text)."""
    return f"<lora:{name}:{weight:g}>"
