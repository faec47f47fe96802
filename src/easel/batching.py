"""Request batching: compatible requests run as one pipeline call (easel serve --max-batch).

Which requests can share a call is decided by batch_key, before anything loads. A batch runs
through Easel.generate for its first request (the leader), so every step of the data flow
(styles, family defaults, limits, leases, LoRAs, embeddings, size, the scheduler that ran) is
the one a solo run takes; where the leader's pipeline call is made (Easel._run), merge_batch
adds the other requests to it: each one's prompts encoded as apply_prompts encodes them alone
(the pipeline's own encode_prompt or Compel), the embeddings concatenated along the batch,
and each image's own generator (its request's seed + i). The output is split back into one
GenerationResult per request, each with its own concrete request, seeds, nsfw flags and
warnings, so its gallery record and recipe are those of a solo run.

Pixels: the UNet and VAE then compute over a bigger batch. On CPU that changes the last bits
of some sums, so a batched image can differ from its solo replay by one level (of 255) in a
few pixels (docs/performance.md has the numbers); batching is therefore off by default.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from easel.errors import EaselError, GenerationFailed, InvalidRequest
from easel.limits import Limits
from easel.request import GenerationRequest
from easel.result import CancelToken, GenerationResult, Progress

BATCHED_FAMILIES = ("sd15", "sdxl")  # not: the SDXL refiner (as a model), Kandinsky (one call per image)
OWN_FIELDS = ("prompt", "negative_prompt", "seed", "num_images")  # what may differ inside a batch
# the pipeline arguments apply_prompts may fill, in the order _conditioning returns them
CONDITIONING = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)
SCHEDULE_STEPS = 150  # prompt editing is looked for over this many steps when steps is not given


def batch_key(engine: Any, request: GenerationRequest) -> str | None:
    """The key two requests must share to run in one pipeline call; None: it runs alone.

    Equal keys mean equal everything but the prompt, negative prompt, seed and image count:
    model (as resolved) and family, size, steps, scheduler (its options and eta), guidance and
    the other pipeline scalars, clip skip, LoRAs and their weights, VAE, controls (none, or the
    very same units and images), tiling, prompt syntax, safety checker; the textual-inversion
    embeddings the prompts name (the same set: they are loaded per run); and the length of
    the prompt embeddings (75-token chunks of the longer prompt), so that they concatenate.

    Never batched (None): an init image (image-to-image, inpainting, outpainting), the hires
    fix, variation seeds or seed resize, prompt editing or alternation (a schedule of texts),
    an SDXL refiner, families other than SD 1.x/2.x and SDXL (Kandinsky), and a request whose
    model, prompts or embeddings cannot be read (its own run reports why).
    """
    from easel.models.cache import detect_family
    from easel.models.embeddings import counted_embeddings

    if (
        request.init_image is not None
        or request.mask_image is not None
        or request.hires is not None
        or request.variation_seed is not None
        or request.variation_strength > 0
        or request.seed_resize_from is not None
        or request.refiner is not None
    ):
        return None
    try:
        request = engine.with_styles(request)  # styles add text (and <lora:> tags) to the prompts
        source = engine.resolve_model(request.model)
        family = detect_family(source)
        if family.name not in BATCHED_FAMILIES:
            return None
        texts = (request.prompt, request.negative_prompt)
        if any(_scheduled(text, request) for text in texts):
            return None
        chunks = max(
            engine.count_tokens(text, model=request.model, syntax=request.prompt_syntax).chunks
            for text in texts
        )
        folder = engine.settings.embeddings_folder
        embeddings = sorted({name for text in texts for name in counted_embeddings(text, folder)})
    except (EaselError, OSError, ValueError):
        return None
    fields = request.model_dump(mode="json", exclude=set(OWN_FIELDS))
    return json.dumps(
        [source.location, family.name, max(chunks, 1), embeddings, fields], sort_keys=True, default=str
    )


def compatible(engine: Any, first: GenerationRequest, second: GenerationRequest) -> bool:
    """Whether the two requests can run in one pipeline call (see batch_key)."""
    key = batch_key(engine, first)
    return key is not None and key == batch_key(engine, second)


def _scheduled(text: str, request: GenerationRequest) -> bool:
    """Whether `text` reads differently at some step (prompt editing or alternation)."""
    from easel.prompts.scheduling import prompt_schedule

    schedule = prompt_schedule(text, request.prompt_syntax, request.steps or SCHEDULE_STEPS)
    return len({value for _, value in schedule}) > 1


class Unmergeable(Exception):
    """Internal: the batch turned out not to fit one call (found before the call): run alone."""


@dataclass
class _Batch:
    """The requests that join the leader's pipeline call, and what merging them made."""

    others: list[GenerationRequest]
    limits: Limits
    merged: bool = False
    concrete: list[GenerationRequest] = field(default_factory=list)
    warnings: list[list[str]] = field(default_factory=list)


_CURRENT: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar("easel_batch", default=None)


def generate_batch(
    engine: Any,
    requests: Sequence[GenerationRequest],
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
    limits: Limits | None = None,
    **options: Any,
) -> list[GenerationResult]:
    """One result per request (in order), made by one pipeline call; see Easel.generate_batch."""
    requests = list(requests)
    if len(requests) <= 1:
        return [engine.generate(request, on_progress, cancel, limits, **options) for request in requests]
    limits = limits or Limits()
    keys = [batch_key(engine, request) for request in requests]
    if keys[0] is None or any(key != keys[0] for key in keys):
        raise InvalidRequest(
            "these requests cannot run as one batch: they differ in more than prompts, seed and "
            "image count, or one of them is never batched (see easel.batching.batch_key)",
            field="requests",
        )
    total = sum(request.num_images for request in requests)
    if limits.max_images is not None and total > limits.max_images:
        raise InvalidRequest(
            f"invalid batch: {total} images in one call, more than this server's limit of "
            f"{limits.max_images} images per request",
            field="num_images",
            value=total,
        )
    leader, *others = requests
    others = [engine.with_styles(request) for request in others]
    family = _family(engine, leader)
    for request in others:
        family.check_request(request)  # prompt length, nesting and syntax, as generate checks them
    batch = _Batch(others, limits)
    token = _CURRENT.set(batch)
    try:
        result = engine.generate(leader, on_progress, cancel, limits, **options)
    except Unmergeable:
        _CURRENT.reset(token)
        token = None
        return [engine.generate(request, on_progress, cancel, limits, **options) for request in requests]
    finally:
        if token is not None:
            _CURRENT.reset(token)
    if not batch.merged:  # generate made no call it could join: a bug, not the caller's
        raise GenerationFailed("the batch was not merged into the pipeline call")
    return _split(result, batch)


def _family(engine: Any, request: GenerationRequest) -> Any:
    from easel.models.cache import detect_family

    return detect_family(engine.resolve_model(request.model))


def merge_batch(family: Any, pipe: Any, request: GenerationRequest, arguments: dict[str, Any],
                state: dict[str, Any]) -> None:  # fmt: skip
    """Add the current batch's other requests to the leader's pipeline call (in place): called
    by Easel._run once the leader's prompts are in `arguments`; nothing when no batch runs.

    Each request's prompts are encoded alone (apply_prompts; where that leaves the texts to
    the pipeline, the pipeline's own encode_prompt, as its call would), the embeddings are
    repeated per image and concatenated, and each image gets its own generator (seed + i)."""
    batch = _CURRENT.get()
    if batch is None or batch.merged:
        return
    batch.merged = True  # once: a second call in the same run (none today) runs alone
    import torch

    concrete = [_concrete(request, other) for other in batch.others]
    for other in concrete:
        batch.limits.check(other)
    parts = [_conditioning(pipe, request, arguments)]
    warnings = []
    for other in concrete:
        own: dict[str, Any] = {
            "prompt": other.prompt,
            "negative_prompt": other.negative_prompt or None,
            "num_images_per_prompt": other.num_images,
        }
        warnings.append(family.apply_prompts(pipe, other, own, state))
        if "callback_on_step_end" in own:  # a schedule of texts: batch_key keeps these out
            raise Unmergeable("prompt schedule")
        parts.append(_conditioning(pipe, other, own))
    if len({tuple(part[0].shape[1:]) for part in parts}) != 1:
        raise Unmergeable("prompt embeddings of different lengths")
    counts = [request.num_images, *(other.num_images for other in concrete)]
    arguments.pop("prompt", None)
    arguments.pop("negative_prompt", None)
    for index, name in enumerate(CONDITIONING):
        tensors = [part[index] for part in parts]
        if all(tensor is None for tensor in tensors):
            arguments.pop(name, None)
            continue
        if any(tensor is None for tensor in tensors):
            raise Unmergeable(f"{name} missing for some requests")
        arguments[name] = torch.cat([torch.cat([t] * n) for t, n in zip(tensors, counts, strict=True)])
    arguments["num_images_per_prompt"] = 1
    seeds = [_seed(other) + i for other in concrete for i in range(other.num_images)]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    arguments["generator"] = [*arguments["generator"], *generators]
    batch.concrete, batch.warnings = concrete, warnings


def _seed(request: GenerationRequest) -> int:
    assert request.seed is not None
    return request.seed


def _concrete(leader: GenerationRequest, other: GenerationRequest) -> GenerationRequest:
    """`other` made concrete as the leader was: everything but its own prompts, seed (random
    when not given) and image count is the leader's (batch_key made sure they were equal)."""
    seed = other.seed if other.seed is not None else secrets.randbelow(2**32)
    own = {"prompt": other.prompt, "negative_prompt": other.negative_prompt,
           "num_images": other.num_images, "seed": seed}  # fmt: skip
    return GenerationRequest.from_fields({**leader.model_dump(), **own})


def _conditioning(pipe: Any, request: GenerationRequest, arguments: dict[str, Any]) -> tuple[Any, ...]:
    """(embeds, negative embeds, pooled, negative pooled) of one prompt (batch 1): those
    apply_prompts put in `arguments`, else what the pipeline's call would encode from the texts."""
    if "prompt_embeds" in arguments:
        return tuple(arguments.get(name) for name in CONDITIONING)
    import torch

    assert request.guidance_scale is not None
    guided = request.guidance_scale > 1 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
    with torch.no_grad():
        encoded = pipe.encode_prompt(
            prompt=arguments["prompt"],
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guided,
            negative_prompt=arguments.get("negative_prompt"),
        )
    return (*encoded, None, None)[:4]


def _split(result: GenerationResult, batch: _Batch) -> list[GenerationResult]:
    """The batch's one result cut into one per request, each with its own request, images,
    seeds, nsfw flags and prompt warnings (the run's other warnings go to every request)."""
    from easel.prompts.encoding import syntax_warnings

    leader = result.request
    own_warnings = syntax_warnings(leader.prompt, leader.prompt_syntax)
    shared = [warning for warning in result.warnings if warning not in own_warnings]
    results, start = [], 0
    for request, warnings in [(leader, own_warnings), *zip(batch.concrete, batch.warnings, strict=True)]:
        end = start + request.num_images
        results.append(
            dataclasses.replace(
                result,
                images=result.images[start:end],
                nsfw=result.nsfw[start:end],
                request=request,
                timings=dict(result.timings),
                warnings=[*warnings, *shared],
            )
        )
        start = end
    if start != len(result.images):
        raise GenerationFailed(f"the batch made {len(result.images)} images, expected {start}")
    return results
