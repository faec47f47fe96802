"""What a family is: its pipelines, its defaults, and how its pipelines are loaded and called.

A family is data plus a few overridable methods. The engine never branches on a family's
name: it asks the family to check a request, name the companion models it needs (SDXL's
refiner, Kandinsky's prior), load a base pipeline, derive a task pipeline from it, turn a
concrete request into the pipeline's call arguments, and run it. A family with different
needs subclasses Family and overrides just those methods.

The hooks, in the order the engine calls them:

    variant(source)                         the family of this model (FLUX.1 dev vs schnell)
    check_request(request)                  refuse tasks/fields this family cannot serve
    companions(request, source, identify)   other models the request needs, by role
    check_embeddings(used)                  refuse embeddings a prompt names (no textual inversion)
    field_defaults(request)                 family-only defaults recorded in the concrete request
    load_pipeline(source, ...)              the cached base pipeline (companions may share parts
    shared_components(source, base)           of the base they are loaded beside)
    default_size(pipe)                      native size when the request gives none
    embedding_targets(pipe)                 (vectors key, tokenizer, text encoder) embeddings load into
    check_control(index, ref, config, unet) refuse a ControlNet made for another base (before
                                              its weights load, and again against the loaded UNet)
    derive(base, task, companions, ...)     the task pipeline, sharing the base's weights (with
                                              controlnet=[...]: the family's ControlNet class);
                                              task is request.task: text2img | img2img | inpaint
                                              | edit (reference images: edit_class)
    edit_size(pipe, references)             the output size of an edit when the request gives none
    check_unet(base, task)                  a 9-channel UNet (dedicated inpainting) only inpaints
    call_arguments(pipe, request, image)    the pipeline's keyword arguments
    edit_arguments(pipe, request, refs)     the edit pipeline's reference-image ones (FLUX.1 Kontext)
    control_arguments(request, images, ...) the ControlNet ones (images, scales, start/end)
    run(pipe, arguments, request, ...)      call it; check the pixels are finite; PIL images
    a1111_parameters(request)               `parameters` entries written the family's way (FLUX)

and, outside generate: token_window() (Easel.count_tokens: CLIP chunks, or FLUX's T5 window).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from easel.errors import GenerationFailed, InvalidRequest, UnsupportedFeature

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.models.reference import ModelSource
    from easel.request import GenerationRequest

TASKS = ("text2img", "img2img")
INPAINTING_TASKS = (*TASKS, "inpaint")
INPAINTING_UNET_CHANNELS = 9  # latents 4 + mask 1 + masked-image latents 4: a dedicated inpainting model


class Loaded(Protocol):
    """What the hooks use of a loaded model (companions): easel.models.cache.LoadedModel is
    one. The cache imports the families, so the families never import the cache."""

    source: ModelSource
    family: Family
    pipeline: Any
    state: dict[str, Any]


# Resolves a model reference (repo id, folder, file) to its source and detected family.
Identify = Callable[[str], "tuple[ModelSource, Family]"]


@dataclass
class RunOutput:
    """What a family's run returns: PIL images, safety flags (None: no checker) and
    warnings the user should see (e.g. "decoded again in float32")."""

    images: list[Any]
    nsfw_content_detected: list[bool] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """A model family, described as data so the engine needs no branches on names.

    Pipeline classes are named (not imported) so describing a family imports nothing heavy.
    `options` names the family-only request fields (request.FAMILY_FIELDS) this family
    understands; any other family-only field set in a request is refused by check_request.
    """

    name: str
    pipeline_classes: tuple[str, ...]  # _class_name values in model_index.json
    single_file_types: tuple[str, ...]  # diffusers infer_diffusers_model_type() results
    text2img_class: str
    img2img_class: str
    default_steps: int
    default_guidance: float
    tasks: tuple[str, ...] = TASKS
    options: tuple[str, ...] = ()
    # ControlNet pipeline classes (None: this family takes no ControlNet), and the
    # addition_embed_type values of the ControlNets made for it (SDXL's are "text_time")
    controlnet_text2img_class: str | None = None
    controlnet_img2img_class: str | None = None
    control_addition_embed_types: tuple[str | None, ...] = (None, "text")
    # the ControlNet model classes (config _class_name) made for this family, and the wrapper
    # that runs several at once (FLUX.1: FluxControlNetModel, FluxMultiControlNetModel)
    control_classes: tuple[str, ...] = ("ControlNetModel",)
    multi_controlnet_class: str = "MultiControlNetModel"
    denoiser: str = "UNet"  # what its ControlNets steer, for messages (the DiT families: "transformer")
    # inpainting (task "inpaint", in `tasks`): the pipeline classes, derived from the base like the
    # others; they serve 4-channel UNets (the known region blended back each step) and 9-channel
    # dedicated inpainting UNets alike
    inpaint_class: str | None = None
    controlnet_inpaint_class: str | None = None
    # LoRA adapters (easel.models.lora): the base pipeline has diffusers' LoRA loader for its
    # UNet and text encoders
    loras: bool = False
    # textual-inversion embeddings (easel.models.embeddings): the base pipeline has diffusers'
    # textual-inversion loader; embedding_targets names the text encoders it loads into
    embeddings: bool = False
    # what dtype "auto" means on a GPU: float16 for the UNet families; bfloat16 where float16
    # overflows (FLUX's T5 and transformer)
    accelerator_dtype: str = "float16"
    # instruction editing (task "edit", in `tasks`): the pipeline class that takes reference
    # images, and how many it takes
    edit_class: str | None = None
    max_reference_images: int = 0
    # guidance_scale is a distilled-guidance input of the model, not classifier-free guidance
    # (FLUX.1-dev, Kontext): the A1111 door reads it from Forge's distilled_cfg_scale
    distilled_guidance: bool = False
    # the name messages and A1111 answers show ("FLUX.1-dev"); "" means `name`
    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:  # frozen: set through object.__setattr__, as dataclasses do
            object.__setattr__(self, "title", self.name)

    # -- detection and checks -------------------------------------------------------------

    def matches(self, model_index: Mapping[str, Any]) -> bool:
        """Whether a model_index.json describes a model of this family."""
        return str(model_index.get("_class_name", "")) in self.pipeline_classes

    def variant(self, source: ModelSource) -> Family:
        """The family of this particular model, for families whose models share a
        model_index.json and differ in a component's config (FLUX.1 dev vs schnell: the
        transformer's guidance_embeds); reads small JSON files only. Default: this family."""
        return self

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, before anything loads, what this family cannot do: a task it lacks or a
        family-only field it would silently ignore."""
        from easel.prompts.checks import check_prompts
        from easel.request import FAMILY_FIELDS

        check_prompts(request)  # too long, too deep or malformed fails here, early, in bounded time
        task = request.task
        if task not in self.tasks:
            error = UnsupportedFeature(self.unsupported_task_message(task))
            if task == "edit":
                error.field = "reference_images"  # type: ignore[attr-defined]
            raise error
        if len(request.reference_images) > self.max_reference_images > 0:
            error = UnsupportedFeature(
                f"reference_images: {self.name} models take {self.max_reference_images} reference "
                f"image(s) to edit, and {len(request.reference_images)} were given; send at most "
                f"{self.max_reference_images}"
            )
            error.field = "reference_images"  # type: ignore[attr-defined]
            raise error
        for name in FAMILY_FIELDS:
            value = getattr(request, name)
            if value is not None and name not in self.options:
                users = ", ".join(self.families_using(name)) or "no family"
                raise UnsupportedFeature(
                    f"{name}={value!r} is not used by {self.name} models (it applies to: {users})"
                )
        if request.controls and self.controlnet_class(task) is None:
            users = ", ".join(f.name for f in _families() if f.controlnet_class(task) is not None)
            error = UnsupportedFeature(
                f"controls: {self.name} models cannot be steered by a ControlNet for {task} "
                f"(ControlNet works with: {users})"
            )
            error.field = "controls"  # type: ignore[attr-defined]
            raise error

    def check_loras(self, request: GenerationRequest) -> None:
        """Refuse LoRAs for a family whose pipelines cannot take them (never ignore them)."""
        if request.loras and not self.loras:
            users = ", ".join(f.name for f in _families() if f.loras)
            raise UnsupportedFeature(
                f"loras: {self.name} models take no LoRA here (LoRAs work with: {users})"
            )

    def check_embeddings(self, used: list[tuple[str, str]]) -> None:
        """Refuse textual-inversion embeddings named in a prompt ((name, field) pairs) for a
        family whose text encoders cannot take them, rather than reading the name as text."""
        if used and not self.embeddings:
            name, field = used[0]
            users = ", ".join(f.name for f in _families() if f.embeddings)
            raise UnsupportedFeature(
                f"{field}: {name!r} is a textual-inversion embedding, which {self.name} models cannot use "
                f"(embeddings work with: {users}); rename the word or the file"
            )

    def unsupported_task_message(self, task: str) -> str:
        if task == "inpaint":
            users = ", ".join(f.name for f in _families() if "inpaint" in f.tasks)
            return f"mask_image/outpaint: {self.name} models cannot inpaint (inpainting works with: {users})"
        if task == "edit":
            users = ", ".join(f.title for f in _families() if "edit" in f.tasks)
            return (
                f"reference_images: {self.name} models cannot edit with reference images "
                f"(edit-capable: {users or 'none'})"
            )
        return f"{self.name} models cannot do {task}"

    def controlnet_class(self, task: str) -> str | None:
        """Name of this family's ControlNet pipeline class for `task` (None: no ControlNet)."""
        return {
            "text2img": self.controlnet_text2img_class,
            "img2img": self.controlnet_img2img_class,
            "inpaint": self.controlnet_inpaint_class,
        }.get(task)

    # Config keys a ControlNet must share with the UNet it steers: its residuals are added to
    # the UNet's blocks (channels, depth) and it reads the same text and added embeddings.
    CONTROL_KEYS = (
        "block_out_channels",
        "cross_attention_dim",
        "addition_embed_type",
        "projection_class_embeddings_input_dim",
    )
    CONTROL_KEYS_IF_SET: tuple[str, ...] = ()  # compared only where the ControlNet's config sets them

    def check_control(
        self,
        index: int,
        reference: str,
        config: Mapping[str, Any] | None,
        unet_config: Mapping[str, Any] | None = None,
        *,
        mode: int | str | None = None,
    ) -> None:
        """Refuse control model `reference` (unit `index`) when it was made for another kind of
        base: first from its config alone (its class, then which family its ControlNets look
        like), then, given the loaded denoiser's config (control_base_config), key by key; and
        refuse a unit's union `mode` where the model takes none (only FLUX.1 union ControlNets do)."""
        if config is None:
            return
        field = f"controls[{index}].model"
        self._check_control_class(field, reference, config)
        if mode is not None:
            raise InvalidRequest(
                f"invalid controls[{index}].mode={mode!r}: {reference!r} is not a union ControlNet "
                "(only FLUX.1 union ControlNets, whose config has num_mode, take a control type); leave "
                "mode out",
                field=f"controls[{index}].mode",
                value=mode,
            )
        kind = config.get("addition_embed_type")
        if kind not in self.control_addition_embed_types:
            made_for = [
                f.name
                for f in _families()
                if f.controlnet_text2img_class
                and kind in f.control_addition_embed_types
                and set(f.control_classes) & set(self.control_classes)
            ]
            raise InvalidRequest(
                f"invalid {field}={reference!r}: it is a ControlNet for {' / '.join(made_for) or 'another'} "
                f"models, and this model is {self.name}; use a ControlNet made for {self.name}",
                field=field,
                value=reference,
            )
        if unet_config is None:
            return
        keys = [*self.CONTROL_KEYS, *(key for key in self.CONTROL_KEYS_IF_SET if config.get(key) is not None)]
        different = [
            f"{key} {_listed(config.get(key))} vs the model's {_listed(unet_config.get(key))}"
            for key in keys
            if _listed(config.get(key)) != _listed(unet_config.get(key))
        ]
        if different:
            raise InvalidRequest(
                f"invalid {field}={reference!r}: this ControlNet does not fit the model's {self.denoiser} "
                f"({'; '.join(different)}); it was made for another base model",
                field=field,
                value=reference,
            )

    def _check_control_class(self, field: str, reference: str, config: Mapping[str, Any]) -> None:
        """A ControlNet of a class made for other families (a FluxControlNetModel on SD 3.5, a
        ControlNetModel on FLUX.1) is refused by its config's _class_name, naming who takes it."""
        class_name = str(config.get("_class_name", "ControlNetModel"))
        if class_name in self.control_classes:
            return
        made_for = [
            f.name for f in _families() if f.controlnet_text2img_class and class_name in f.control_classes
        ]
        takes = " or ".join(self.control_classes) if self.controlnet_text2img_class else "none"
        raise InvalidRequest(
            f"invalid {field}={reference!r}: it is a {class_name}, a ControlNet for "
            f"{' / '.join(made_for) or 'other'} models, and this model is {self.name} (it takes: {takes}); "
            f"use a ControlNet made for {self.name}",
            field=field,
            value=reference,
        )

    def control_base_config(self, pipe: Any) -> dict[str, Any]:
        """The config of the denoiser a ControlNet's residuals are added to (check_control compares
        them): the UNet here; the transformer for the DiT families."""
        return dict(pipe.unet.config)

    @staticmethod
    def families_using(option: str) -> list[str]:
        return [family.name for family in _families() if option in family.options]

    def companions(
        self, request: GenerationRequest, source: ModelSource, identify: Identify
    ) -> dict[str, tuple[ModelSource, Family]]:
        """Other models this request needs beside the base, by role ("refiner", "prior").
        The engine leases each from the cache (loaded beside the base, see
        shared_components) and hands them to derive and run. Default: none."""
        return {}

    def field_defaults(self, request: GenerationRequest) -> dict[str, Any]:
        """Family-only fields to fill when the request leaves them None, so the concrete
        request records what actually ran."""
        return {}

    def token_window(self) -> tuple[str, int] | None:
        """How Easel.count_tokens counts this family's prompts: None, CLIP's 75-token chunks
        (the `tokenizer` folder); or (tokenizer folder, window) for a family that reads one
        window of another tokenizer (FLUX: T5's tokenizer_2, 512 or 256 tokens)."""
        return None

    def a1111_parameters(self, request: GenerationRequest) -> dict[str, object]:
        """Entries of the A1111 `parameters` text this family writes its own way (FLUX:
        "CFG scale: 1, Distilled CFG Scale: 3.5", as Forge writes them). Default: none."""
        return {}

    # -- loading ------------------------------------------------------------------------------

    def pipeline_class(self, task: str) -> Any:
        import diffusers

        name = {
            "text2img": self.text2img_class,
            "img2img": self.img2img_class,
            "inpaint": self.inpaint_class,
            "edit": self.edit_class,
        }[task]
        if name is None:
            raise UnsupportedFeature(self.unsupported_task_message(task))
        return getattr(diffusers, name)

    def load_pipeline(
        self,
        source: ModelSource,
        *,
        dtype: Any,
        allow_pickle: bool,
        components: Mapping[str, Any] | None = None,
        variant: str | None = None,
        quantization_config: Any = None,
    ) -> Any:
        """Load the base pipeline; `components` are already-loaded modules to use instead of
        loading the model's own (see shared_components); `variant` ("fp16") picks weight
        files; `quantization_config` (diffusers' PipelineQuantizationConfig, easel.models.quantize)
        quantises modules as they load. Library errors propagate to the cache, which translates them."""
        pipeline_class = self.pipeline_class("text2img")
        if source.kind == "single_file":
            return pipeline_class.from_single_file(source.location, torch_dtype=dtype, **(components or {}))
        return pipeline_class.from_pretrained(
            source.location,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            variant=variant,
            quantization_config=quantization_config,
            **(components or {}),
        )

    def shared_components(self, source: ModelSource, base: Any) -> dict[str, Any]:
        """Modules of `base` (the pipeline this model is a companion of) that this model can
        use instead of loading its own copy. Default: none."""
        return {}

    # -- running -------------------------------------------------------------------------------

    def derive(
        self, base: Any, task: str, *, companions: Mapping[str, Loaded] | None = None, **overrides: Any
    ) -> Any:
        """The task's pipeline sharing `base`'s weights (from_pipe), with `overrides`
        (a fresh scheduler, safety_checker=None, ...) as its own components.

        `controlnet` (a list of ControlNetModels) picks the family's ControlNet class: one
        model goes in as is (what a plain single-unit diffusers call uses), several as one
        MultiControlNetModel; either way the base's modules are shared, not copied."""
        self.check_unet(base, task)
        controlnets = overrides.pop("controlnet", None)
        # from_pipe ends with .to(dtype), float32 when no dtype is given: that would cast the cached
        # base's shared modules (float16/bfloat16 on a GPU) to float32 on every run. The base's own
        # dtype makes it a no-op; the note diffusers logs on every .to(dtype) is kept from the user.
        overrides.setdefault("dtype", base.dtype)
        if not controlnets:
            with _no_dtype_cast_notes():
                return self.pipeline_class(task).from_pipe(base, **overrides)
        import diffusers

        class_name = self.controlnet_class(task)
        if class_name is None:  # check_request refuses this earlier; a guard for direct callers
            raise UnsupportedFeature(f"{self.name} models cannot be steered by a ControlNet for {task}")
        controlnet = self.combined_controlnet(list(controlnets))
        with _no_dtype_cast_notes():
            return getattr(diffusers, class_name).from_pipe(base, controlnet=controlnet, **overrides)

    def combined_controlnet(self, controlnets: list[Any]) -> Any:
        """The units' ControlNets as the pipeline's one `controlnet`: one as is (what a plain
        single-unit diffusers call uses), several through multi_controlnet_class (Qwen-Image's
        takes one union ControlNet for several images, and overrides this)."""
        import diffusers

        multi = getattr(diffusers, self.multi_controlnet_class)
        return controlnets[0] if len(controlnets) == 1 else multi(controlnets)

    def check_unet(self, base: Any, task: str) -> None:
        """A dedicated inpainting model (a 9-channel UNet, read from the UNet's config) only
        inpaints: its UNet takes the mask and the masked image beside the latents."""
        unet = getattr(base, "unet", None)
        channels = None if unet is None else unet.config.get("in_channels")
        if channels == INPAINTING_UNET_CHANNELS and task != "inpaint":
            raise UnsupportedFeature(
                f"this is a dedicated inpainting model (its UNet takes {channels} channels: latents, mask, "
                f"masked image), which cannot do {task}; give init_image and mask_image (or outpaint)"
            )

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """(width, height) the model was trained at, as diffusers computes it."""
        side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def edit_size(self, pipe: Any, references: list[Image]) -> tuple[int, int]:
        """(width, height) of an edit whose request gives no size: the first reference image's,
        in multiples of 8. An edit family overrides it with its own rule (Kontext)."""
        first = references[0]
        return max(8, first.width // 8 * 8), max(8, first.height // 8 * 8)

    def edit_arguments(
        self, pipe: Any, request: GenerationRequest, references: list[Image]
    ) -> dict[str, Any]:
        """The edit pipeline's keyword arguments for the reference images (added to
        call_arguments'); only edit-capable families are asked (check_request refuses the rest)."""
        raise UnsupportedFeature(self.unsupported_task_message("edit"))

    def call_arguments(
        self, pipe: Any, request: GenerationRequest, init_image: Image | None
    ) -> dict[str, Any]:
        """The pipeline's keyword arguments for a concrete request (generators and the step
        callback are added by the engine)."""
        arguments: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
        }
        if init_image is not None:
            arguments.update(image=init_image, strength=request.strength)
        else:
            arguments.update(width=request.width, height=request.height)
        return arguments

    # -- prompts ------------------------------------------------------------------------------

    def prompt_encoders(self, pipe: Any) -> list[tuple[Any, Any, str, bool]]:
        """(tokenizer, text encoder, Compel embeddings type, pooled?) in the order the
        pipeline concatenates them; SD 1.x/2.x: one CLIP text encoder, last hidden state."""
        return [(pipe.tokenizer, pipe.text_encoder, "LAST_HIDDEN_STATES_NORMALIZED", False)]

    def embedding_targets(self, pipe: Any) -> list[tuple[str, Any, Any]]:
        """(key of the embedding's vectors, tokenizer, text encoder) for each text encoder a
        textual-inversion embedding loads into; SD 1.x/2.x: the one, with the file's one set."""
        from easel.models.embeddings import SD_KEY

        return [(SD_KEY, pipe.tokenizer, pipe.text_encoder)]

    def clip_skip_layers(self, request: GenerationRequest, encoders: list[tuple[Any, Any, str, bool]]) -> int:
        """diffusers' `clip_skip` for the request's (A1111-counted) clip skip: N - 1 layers before
        the one the model uses (0: none); refused, naming clip_skip, when a text encoder has
        fewer layers than that."""
        skip = (request.clip_skip or 1) - 1
        if not skip:
            return 0
        layers = min(int(encoder.config.num_hidden_layers) for _, encoder, _, _ in encoders)
        used = 1 if any(kind.startswith("PENULTIMATE") for _, _, kind, _ in encoders) else 0
        if skip + used > layers:  # hidden_states: the embeddings' output, then one per layer
            raise InvalidRequest(
                f"invalid clip_skip={request.clip_skip}: this model's text encoder has {layers} layers, "
                f"so clip skip goes up to {layers + 1 - used}",
                field="clip_skip",
                value=request.clip_skip,
            )
        return skip

    def apply_prompts(
        self,
        pipe: Any,
        request: GenerationRequest,
        arguments: dict[str, Any],
        state: dict[str, Any],
        *,
        first_step: int = 0,
    ) -> list[str]:
        """Put the encoded prompts into `arguments` (in place); returns warnings.

        Unweighted prompts within one 75-token window and without clip skip keep the pipeline's
        own encode_prompt (identical embeddings, no extra cost); anything else is encoded with
        Compel (at the clip-skipped layer, for both prompts, as A1111 does), chunked
        instead of truncated, into prompt_embeds (and pooled embeds where the family has
        them). `state` is the loaded model's scratch space: the encoder and its cache live
        there, so they go when the model is evicted. Textual-inversion embeddings the engine
        loaded for this run (state["active_embeddings"]) reach both paths as their tokens, and
        count every vector towards the 75 tokens.

        Prompt editing and alternation (easel.prompts.scheduling) give each step its own
        texts: every distinct (prompt, negative prompt) pair is encoded once, the first goes
        into `arguments`, and the step callback hands the pipeline the next step's conditioning
        when it changes. `first_step` is the index of the run's first step in the schedule (an
        SDXL refiner continues where the base stopped).
        """
        from easel.prompts.encoding import CHUNK_TOKENS, PromptEncoder, syntax_warnings
        from easel.prompts.scheduling import prompt_schedule, text_at

        syntax, steps = request.prompt_syntax, request.steps or self.default_steps
        texts = (request.prompt, request.negative_prompt)
        schedules = [prompt_schedule(text, syntax, steps) for text in texts]

        def pair_at(index: int) -> tuple[str, str]:
            return text_at(schedules[0], index), text_at(schedules[1], index)

        ends = sorted({end for schedule in schedules for end, _ in schedule})
        pairs = list(dict.fromkeys(pair_at(end) for end in ends))
        warnings = syntax_warnings(request.prompt, syntax)
        encoders = self.prompt_encoders(pipe)
        skip = self.clip_skip_layers(request, encoders)
        plans = {pair: self._plan_pair(pair, syntax, state) for pair in pairs}
        tokenizer = encoders[0][0]
        longest = max(tokens for plan in plans.values() for tokens in plan.tokens(tokenizer))
        # with clip skip, easel encodes too: diffusers' own `clip_skip` skips layers for the prompt
        # only (its negative prompt keeps the model's layer), A1111 for both, as easel does
        if len(pairs) == 1:
            plan = plans[pairs[0]]
            if not plan.weighted and longest <= CHUNK_TOKENS and not skip:
                arguments["prompt"] = plan.positive.text
                arguments["negative_prompt"] = plan.negative.text or None
                return warnings
        # one encoder per clip skip (its layer is part of what the encoder computes)
        key = "prompt_encoder" if not skip else f"prompt_encoder (clip skip {skip})"
        encoder = state.get(key)
        if encoder is None:
            encoder = state[key] = PromptEncoder(encoders, clip_skip=skip)
        conditionings = {pair: self._encode_pair(pipe, encoder, plans[pair], state) for pair in pairs}
        current = [pair_at(first_step)]
        embeds, negative_embeds, pooled, negative_pooled = conditionings[current[0]]
        arguments.pop("prompt", None)
        arguments.pop("negative_prompt", None)
        arguments.update(prompt_embeds=embeds, negative_prompt_embeds=negative_embeds)
        if pooled is not None:
            arguments.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
        if len(pairs) > 1:
            inner = arguments.get("callback_on_step_end")
            count = int(arguments.get("num_images_per_prompt") or 1)

            def switch(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                result = inner(pipeline, step, timestep, tensors) if inner is not None else tensors
                upcoming = pair_at(first_step + step + 1)
                if upcoming != current[0]:
                    current[0] = upcoming
                    result = {**result, **_step_conditioning(conditionings[upcoming], tensors, count)}
                return result

            arguments["callback_on_step_end"] = switch
            inputs = ["latents", "prompt_embeds", *(["add_text_embeds"] if pooled is not None else [])]
            arguments["callback_on_step_end_tensor_inputs"] = inputs
        return warnings

    @staticmethod
    def _plan_pair(pair: tuple[str, str], syntax: str, state: dict[str, Any]) -> _PairPlan:
        """One step's prompt and negative prompt, planned for encoding (embedding names
        replaced by their tokens) and for counting (a token per vector)."""
        from easel.models.embeddings import ACTIVE_KEY, for_counting, for_encoding
        from easel.prompts.encoding import plan_prompt

        embeddings = state.get(ACTIVE_KEY, {})  # lower-case name -> (token, vectors)
        named = list(zip(pair, ("prompt", "negative_prompt"), strict=True))
        encoded = [plan_prompt(for_encoding(text, embeddings), syntax, field=name) for text, name in named]
        counted = encoded
        if embeddings:  # `tok` stands for all its vectors (`tok tok_1 ...`, which the tokenizer has)
            counted = [plan_prompt(for_counting(t, embeddings), syntax, field=name) for t, name in named]
        return _PairPlan(pair, encoded[0], encoded[1], counted[0], counted[1])

    @staticmethod
    def _encode_pair(pipe: Any, encoder: Any, plan: _PairPlan, state: dict[str, Any]) -> tuple[Any, ...]:
        """(embeds, negative embeds, pooled, negative pooled) of one step's texts."""
        from easel.models.embeddings import ACTIVE_KEY

        embeddings = state.get(ACTIVE_KEY, {})
        # the active LoRAs change what the text encoders compute: part of the cache key; so do
        # the embeddings (their tokens, named by file content, are in the plans too)
        context = (*state.get("active_loras", ()), *sorted(embeddings.values()))
        encoded = encoder.encode(plan.positive, plan.negative, context)
        embeds, negative_embeds, pooled, negative_pooled = encoded
        if not plan.texts[1] and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            import torch  # SDXL's convention for an empty negative prompt, as diffusers applies it

            negative_embeds = torch.zeros_like(negative_embeds)
            negative_pooled = None if negative_pooled is None else torch.zeros_like(negative_pooled)
        return embeds, negative_embeds, pooled, negative_pooled

    def control_arguments(
        self, request: GenerationRequest, control_images: list[Any], *, img2img: bool
    ) -> dict[str, Any]:
        """The ControlNet keyword arguments: the control image is `image` for text-to-image
        and `control_image` beside the init image for image-to-image; scales and guidance
        start/end are per unit (plain floats for one unit, as a plain diffusers call)."""
        if not control_images:
            return {}
        units = request.controls
        single = len(units) == 1

        def per_unit(values: list[Any]) -> Any:
            return values[0] if single else values

        return {
            ("control_image" if img2img else "image"): per_unit(list(control_images)),
            "controlnet_conditioning_scale": per_unit([unit.conditioning_scale for unit in units]),
            "control_guidance_start": per_unit([unit.guidance_start for unit in units]),
            "control_guidance_end": per_unit([unit.guidance_end for unit in units]),
        }

    def run(
        self,
        pipe: Any,
        arguments: dict[str, Any],
        *,
        request: GenerationRequest,
        companions: Mapping[str, Loaded],
    ) -> RunOutput:
        """Call the pipeline and return finite PIL images.

        Why not output_type="pil": a VAE that overflows (the SDXL VAE in float16) decodes
        to NaN, which PIL conversion silently turns into a black image. Asking for numpy
        output keeps the NaN visible; the last step's latents (caught by the step callback)
        are then decoded again in float32, and if even that is not finite the run fails
        with a message instead of returning black pixels.
        """
        caught: dict[str, Any] = {}
        output = pipe(**_catching_latents(arguments, caught), output_type="np")
        images, warnings = self.finite_images(pipe, output.images, caught.get("latents"))
        return RunOutput(
            images=_numpy_to_pil(images),
            nsfw_content_detected=getattr(output, "nsfw_content_detected", None),
            warnings=warnings,
        )

    def finite_images(self, pipe: Any, images: Any, latents: Any) -> tuple[Any, list[str]]:
        """`images` (numpy NHWC in [0, 1]) with non-finite ones decoded again in float32."""
        import numpy as np

        bad = [i for i in range(len(images)) if not np.isfinite(images[i]).all()]
        if not bad:
            return images, []
        if latents is None:
            raise GenerationFailed(
                f"image(s) {bad} came out with non-finite values (NaN/inf) and there are no "
                "latents to decode again; try --dtype float32"
            )
        redone = self.decode_float32(pipe, latents[bad])
        if not np.isfinite(redone).all():
            raise GenerationFailed(
                f"image(s) {bad} came out with non-finite values (NaN/inf) even when decoded in "
                "float32: the denoiser itself overflowed; try --dtype float32"
            )
        images = images.copy()
        images[bad] = redone
        return images, [
            f"the VAE decode of image(s) {bad} gave non-finite values (NaN/inf, the float16 "
            "overflow SDXL's VAE is known for); decoded them again in float32"
        ]

    def decode_float32(self, pipe: Any, latents: Any) -> Any:
        """Decode final latents with the pipeline's VAE in float32, as the pipeline decodes
        them (scaling factor, latents mean/std when the VAE has them, watermark);
        numpy NHWC in [0, 1]."""
        import torch

        vae = pipe.vae
        original = vae.dtype
        try:
            vae.to(dtype=torch.float32)
            latents = latents.to(device=vae.device, dtype=torch.float32)
            with torch.inference_mode():
                image = vae.decode(unscale_latents(vae, latents), return_dict=False)[0]
                if getattr(pipe, "watermark", None) is not None:
                    image = pipe.watermark.apply_watermark(image)
                return pipe.image_processor.postprocess(image, output_type="np")
        finally:
            vae.to(dtype=original)


def unscale_latents(vae: Any, latents: Any) -> Any:
    """Final latents as `vae` decodes them, as the pipelines undo their scaling: the latents
    mean/std where the VAE config has them, else the scaling factor alone. One rule for the
    float32 re-decode and the hires fix's first-pass decode."""
    import torch

    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        return latents * std_t / vae.config.scaling_factor + mean_t
    return latents / vae.config.scaling_factor


@dataclass(frozen=True)
class _PairPlan:
    """One step's (prompt, negative prompt) texts, planned to encode and to count."""

    texts: tuple[str, str]
    positive: Any  # PromptPlan
    negative: Any
    counted_positive: Any
    counted_negative: Any

    @property
    def weighted(self) -> bool:
        return bool(self.positive.weighted or self.negative.weighted)

    def tokens(self, tokenizer: Any) -> list[int]:
        """Tokens of each chunk of both texts."""
        from easel.prompts.encoding import count_tokens

        return count_tokens(tokenizer, self.counted_positive) + count_tokens(tokenizer, self.counted_negative)


def _step_conditioning(conditioning: tuple[Any, ...], tensors: dict[str, Any], count: int) -> dict[str, Any]:
    """A step's conditioning as the pipeline's denoising loop holds it: each embedding repeated
    for the `count` images, negative before positive when guidance doubles the batch (as the
    pipelines concatenate them), in the dtype and on the device of what it replaces."""
    import torch

    embeds, negative_embeds, pooled, negative_pooled = conditioning
    current = tensors["prompt_embeds"]
    guided = current.shape[0] == 2 * count
    parts = [negative_embeds, embeds] if guided else [embeds]
    embeds = torch.cat([part.repeat(count, 1, 1) for part in parts])
    update = {"prompt_embeds": embeds.to(current.device, current.dtype)}
    if pooled is not None and "add_text_embeds" in tensors:
        current = tensors["add_text_embeds"]
        parts = [negative_pooled, pooled] if guided else [pooled]
        pooled = torch.cat([part.repeat(count, 1) for part in parts])
        update["add_text_embeds"] = pooled.to(current.device, current.dtype)
    return update


@contextlib.contextmanager
def _no_dtype_cast_notes() -> Iterator[None]:
    """diffusers' ModelMixin.to(dtype) logs "There are modules in ... that should be kept in
    float32" on every call, even with none: derive's .to is a no-op (the base's own dtype), so
    the note is noise for the user (issue 19). Only that logger, only for the call."""
    import logging

    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_REGISTERED: tuple[Family, ...] = ()


def register(families: tuple[Family, ...]) -> None:
    """Called by easel/families/__init__.py with every family (FAMILIES): the hooks name the
    other families in their errors, and this module imports none of the family modules (they
    import it). Python runs the package's __init__ before any of its modules, so the list is
    always set before a hook runs."""
    global _REGISTERED
    _REGISTERED = families


def _families() -> tuple[Family, ...]:
    return _REGISTERED


def _listed(value: Any) -> Any:
    """Config values compare alike whether JSON gave a list or diffusers a tuple."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _catching_latents(arguments: dict[str, Any], caught: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with the step callback wrapped to remember the latest latents."""
    callback = arguments.get("callback_on_step_end")

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if "latents" in tensors:
            caught["latents"] = tensors["latents"]
        return callback(pipeline, step, timestep, tensors) if callback is not None else tensors

    return {**arguments, "callback_on_step_end": on_step_end}


def _numpy_to_pil(images: Any) -> list[Any]:
    """diffusers' own numpy -> PIL conversion, so pixels equal output_type="pil"."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(images)
