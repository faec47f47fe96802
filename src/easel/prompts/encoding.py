"""Prompt text -> what a pipeline is called with, for the three syntaxes easel accepts.

- `compel`: Compel's own syntax (`word+`, `(words)1.3`, `.blend()`, `.and()`), the seed
  document's choice and easel's default;
- `a1111`: AUTOMATIC1111's syntax, translated exactly by easel.prompts.a1111 (Compel would
  misread it), with `BREAK` starting a new 75-token chunk;
- `plain`: the text as written, no syntax at all.

Nothing is truncated silently: prompts longer than one CLIP window (75 tokens) are encoded in
chunks by Compel (truncate_long_prompts=False) and positive and negative conditioning are
padded to the same length. A prompt with no weighting and no more than 75 tokens takes the
cheapest path that gives identical embeddings: the pipeline's own encode_prompt (the test
suite checks the equality), so ordinary prompts cost nothing extra. With clip skip, easel
encodes every prompt (ClipSkipped): diffusers' own `clip_skip` leaves the negative prompt at the
model's layer, A1111 skips both.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from easel.errors import InvalidRequest
from easel.prompts.checks import COMPEL_SPECIAL, enable_packrat

Syntax = Literal["compel", "a1111", "plain"]
SYNTAXES: tuple[str, ...] = ("compel", "a1111", "plain")
CHUNK_TOKENS = 75  # CLIP's 77 positions minus the start and end tokens
LOOKS_LIKE_A1111 = re.compile(r"\([^()]*:\s*[-+]?\d*\.?\d+\s*\)")
CACHE_SIZE = 32


Fragments = tuple[tuple[str, float], ...]  # (text, weight) runs of one chunk


@dataclass(frozen=True)
class PromptPlan:
    """How one prompt will be encoded: Compel-syntax chunks (one per BREAK chunk), and
    whether the plain encode_prompt path gives the same embeddings (`text` is then what it
    is given).

    `fragments`, when set, are the chunks already read into (text, weight) runs exactly as
    Compel's parser would read `chunks` (A1111 and plain syntax, and Compel syntax without
    any syntax characters): the encoder hands them to Compel as parsed prompts, so Compel's
    parser (pyparsing, about a millisecond per character) never sees these prompts.
    """

    chunks: tuple[str, ...]
    weighted: bool
    text: str
    fragments: tuple[Fragments, ...] | None = None


def plan_prompt(prompt: str, syntax: str, *, field: str = "prompt") -> PromptPlan:
    """Parse `prompt` in `syntax`; malformed A1111 syntax is an InvalidRequest at its position."""
    if syntax == "compel":
        weighted = bool(COMPEL_SPECIAL.search(prompt))
        return PromptPlan(
            (prompt,), weighted, prompt, None if weighted else ((_as_compel_reads(prompt, 1.0),),)
        )
    if syntax == "plain":
        return PromptPlan((_escape_for_compel(prompt),), False, prompt, ((_as_compel_reads(prompt, 1.0),),))
    from easel.prompts.a1111 import PromptSyntaxError, a1111_to_compel, parse_a1111

    try:
        chunks = tuple(a1111_to_compel(prompt))
        spans = parse_a1111(prompt)
    except PromptSyntaxError as error:
        raise InvalidRequest(f"invalid {field}: {error}", field=field, value=prompt) from None
    flat = [span for chunk in spans for span in chunk]
    # One chunk at weight 1 is plain text (escapes resolved): the pipeline's own path.
    weighted = len(spans) > 1 or any(span.weight != 1.0 for span in flat)
    fragments = tuple(
        tuple(_as_compel_reads(span.text, span.weight) for span in chunk) or (("", 1.0),) for chunk in spans
    )
    return PromptPlan(chunks, weighted, "".join(span.text for span in flat), fragments)


def _as_compel_reads(text: str, weight: float) -> tuple[str, float]:
    """A run of text and its weight as Compel's parser returns it for the translated prompt:
    a space after every comma, weights as written in the translation (4 decimals)."""
    from easel.prompts.a1111 import compel_weight

    return re.sub(r",(\S)", r", \1", text), compel_weight(weight)


def syntax_warnings(prompt: str, syntax: str) -> list[str]:
    """A nudge when a prompt seems written for another syntax than the one chosen."""
    if syntax == "compel" and LOOKS_LIKE_A1111.search(prompt):
        return [
            "the prompt contains AUTOMATIC1111 weighting like '(word:1.3)', which Compel reads as "
            "text; use --syntax a1111 (prompt_syntax='a1111') if that is what you meant"
        ]
    return []


def _escape_for_compel(text: str) -> str:
    """Plain text as a Compel prompt that means exactly that text (used for long plain
    prompts, which must be chunked instead of truncated)."""
    from easel.prompts.a1111 import a1111_to_compel

    escaped = re.sub(r"([()\[\]\\])", r"\\\1", text).replace("BREAK", "BRE\u200bAK")
    return " ".join(a1111_to_compel(escaped)).replace("BRE\u200bAK", "BREAK")


def count_tokens(tokenizer: Any, plan: PromptPlan) -> list[int]:
    """Tokens in each BREAK chunk (without start/end tokens)."""
    return [len(tokenizer(_visible_text(chunk), verbose=False).input_ids) - 2 for chunk in plan.chunks]


def _visible_text(compel_prompt: str) -> str:
    """The words of a Compel prompt without its weighting syntax (for counting tokens)."""
    text = re.sub(r"\)[0-9.]+", " ", compel_prompt)
    text = re.sub(r"(?<=\w)[+-]+(?=\s|$)", "", text)
    return re.sub(r'\\(.)|[()"]', lambda m: m.group(1) or " ", text)


@dataclass(frozen=True)
class TokenCount:
    """What a prompt box shows: "83/150, 2 chunks"; `counted_with` names the model whose
    tokenizer counted and `vocabulary` its size (the bundled demo model's is small, so its counts
    differ from CLIP's)."""

    tokens: int
    chunks: int
    counted_with: str = ""
    vocabulary: int = 0
    window: int = CHUNK_TOKENS  # tokens per chunk (FLUX's T5: one window of 512 or 256)

    @property
    def capacity(self) -> int:
        return self.chunks * self.window

    def __str__(self) -> str:
        return f"{self.tokens}/{self.capacity}, {self.chunks} chunk{'s' if self.chunks != 1 else ''}"


def window_count(tokenizer: Any, plan: PromptPlan, window: int) -> TokenCount:
    """Tokens of the plain text in one window of `window` tokens, the end-of-text token
    included (FLUX's T5: no chunks; what is past the window is dropped)."""
    return TokenCount(len(tokenizer(plan.text).input_ids), 1, window=window)


def token_count(tokenizer: Any, plan: PromptPlan) -> TokenCount:
    per_chunk = count_tokens(tokenizer, plan)
    chunks = sum(max(1, -(-n // CHUNK_TOKENS)) for n in per_chunk)
    return TokenCount(sum(per_chunk), chunks)


class PromptEncoder:
    """Compel-based encoding for one pipeline's text encoders, with a small cache.

    `encoders` lists (tokenizer, text_encoder, returned embeddings type name, pooled?) in the
    order the pipeline concatenates them (SD: one; SDXL: two; the SDXL refiner: the second).
    Cached encodings are keyed by the plan, so a repeated prompt costs a dictionary lookup.

    `clip_skip` is diffusers' count (A1111's "Clip skip: N" is N - 1): the hidden states come
    from that many layers before the ones the model uses, as the pipelines' own encode_prompt
    takes them (SD: final layer norm of hidden_states[-(k + 1)]; SDXL: hidden_states[-(k + 2)];
    pooled embeddings unchanged). It is part of the encoder's identity: one encoder per value.
    """

    def __init__(self, encoders: list[tuple[Any, Any, str, bool]], clip_skip: int = 0) -> None:
        from compel import Compel, ReturnedEmbeddingsType

        from easel.models.embeddings import MultiVectorTokens

        enable_packrat()  # Compel parses every prompt it encodes; keep that polynomial
        self.clip_skip = clip_skip
        self._compels = [
            Compel(
                tokenizer=tokenizer,
                text_encoder=text_encoder if not clip_skip else ClipSkipped(text_encoder, clip_skip),
                returned_embeddings_type=getattr(ReturnedEmbeddingsType, kind),
                requires_pooled=pooled,
                truncate_long_prompts=False,
                device=str(text_encoder.device),
                # a multi-vector textual-inversion token -> all its vectors' ids, as the pipelines'
                # own maybe_convert_prompt does in text
                textual_inversion_manager=MultiVectorTokens(tokenizer),
            )
            for tokenizer, text_encoder, kind, pooled in encoders
        ]
        self._pooled = [pooled for *_, pooled in encoders]
        self._cache: OrderedDict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = OrderedDict()

    def encode(
        self, positive: PromptPlan, negative: PromptPlan, context: tuple[Any, ...] = ()
    ) -> tuple[Any, Any, Any, Any]:
        """(prompt_embeds, negative_prompt_embeds, pooled, negative_pooled) padded to one length;
        the pooled ones are None for encoders without a pooled output. `context`: whatever
        else changes the encoders' output (the active LoRAs and weights), for the cache key."""
        key = (positive, negative, context)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        import torch

        with torch.inference_mode():
            embeds, pooled = self._encode_chunks(positive.chunks, positive.fragments)
            negative_embeds, negative_pooled = self._encode_chunks(negative.chunks, negative.fragments)
            embeds, negative_embeds = self._pad_to_same_length(embeds, negative_embeds)
        value = (embeds, negative_embeds, pooled, negative_pooled)
        self._cache[key] = value
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    def _pad_to_same_length(self, first: Any, second: Any) -> tuple[Any, Any]:
        """Extend the shorter conditioning with empty-prompt windows, as Compel pads (over
        all encoders at once, so SDXL's concatenated embeddings pad consistently)."""
        import torch

        if first.shape[1] == second.shape[1]:
            return first, second
        empty, _ = self._encode_chunks(("",))
        windows = abs(first.shape[1] - second.shape[1]) // empty.shape[1]
        padding = empty.repeat(1, windows, 1)
        if first.shape[1] < second.shape[1]:
            return torch.cat([first, padding], dim=1), second
        return first, torch.cat([second, padding], dim=1)

    def _encode_chunks(
        self, chunks: tuple[str, ...], fragments: tuple[Fragments, ...] | None = None
    ) -> tuple[Any, Any]:
        """Each BREAK chunk encoded on its own (so it starts a fresh CLIP window), then joined
        along the sequence; the pooled embedding comes from the first chunk."""
        import torch

        parts, pooled = [], None
        for index, chunk in enumerate(chunks):
            per_encoder = []
            for compel, has_pool in zip(self._compels, self._pooled, strict=True):
                if fragments is None:
                    output = compel(chunk)
                else:
                    output = _encode_parsed(compel, chunk, fragments[index], has_pool)
                if has_pool:
                    output, chunk_pooled = output
                    pooled = chunk_pooled if index == 0 else pooled
                per_encoder.append(output)
            length = max(t.shape[1] for t in per_encoder)
            per_encoder = [
                compel.pad_conditioning_tensors_to_same_length([t, torch.zeros(1, length, t.shape[2])])[0]
                if t.shape[1] < length
                else t
                for compel, t in zip(self._compels, per_encoder, strict=True)
            ]
            parts.append(torch.cat(per_encoder, dim=-1))
        return torch.cat(parts, dim=1), pooled


class ClipSkipped:
    """A CLIP text encoder whose outputs end `skip` layers early: `hidden_states` loses its last
    `skip` entries and `last_hidden_state` is the final layer norm of the new last one, so every
    embeddings type Compel reads (last normalized, penultimate normalized or not) moves down by
    `skip` layers, exactly as diffusers' `clip_skip` does. The pooled/projected outputs are the
    encoder's own (diffusers keeps them too). Everything else is the wrapped encoder's."""

    def __init__(self, encoder: Any, skip: int) -> None:
        self._encoder, self._skip = encoder, skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def __call__(self, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        kwargs["output_hidden_states"] = True
        output = self._encoder(input_ids, attention_mask, **{**kwargs, "return_dict": True})
        hidden = tuple(output.hidden_states[: -self._skip])
        output["hidden_states"] = hidden
        output["last_hidden_state"] = final_layer_norm(self._encoder)(hidden[-1])
        return output


def final_layer_norm(text_encoder: Any) -> Any:
    """A CLIP text encoder's final layer norm: under `text_model` (transformers 4, and 5's
    CLIPTextModelWithProjection) or at the top (transformers 5's CLIPTextModel)."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _encode_parsed(compel: Any, chunk: str, fragments: Fragments, pooled: bool) -> Any:
    """What `compel(chunk)` returns, from fragments easel already read: the conditioning of
    the parsed prompt and, where the encoder has one, the pooled embedding of the chunk's text
    (Compel pools the text it was given, syntax included)."""
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    conjunction = Conjunction(prompts=[FlattenedPrompt(list(fragments))], weights=[1.0])
    conditioning, _, _ = compel.build_conditioning_tensor_for_conjunction(
        conjunction, return_tokenization=True
    )
    if not pooled:
        return conditioning
    return conditioning, compel.conditioning_provider.get_pooled_embeddings([chunk], device=compel.device)
