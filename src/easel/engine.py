"""Easel: the facade every door calls, and the one place where the parts are wired.

generate() follows the data flow of docs/architecture.md in numbered steps: resolve the
model reference, detect its family, fill in the family's defaults (checking what can be
checked before any weights load), lease the cached base pipeline, derive the task pipeline
with a fresh scheduler, run it with one CPU generator per image, and return the images with
the concrete request. Third-party exceptions are translated into the EaselError tree here.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.config import Settings
from easel.errors import Cancelled, EaselError, GenerationFailed, InvalidRequest, UnsupportedFeature
from easel.families.base import Family, RunOutput
from easel.limits import Limits
from easel.models.cache import LoadedComponent, LoadedModel, PipelineCache, detect_family, quiet_import_notes
from easel.models.control import ControlSource
from easel.models.optimizations import check_options, prepare_task
from easel.models.quantize import (
    check_quantize,
    dtype_casts_skipped,
    resolve_load_options,
    with_transformer_base,
)
from easel.models.reference import ModelSource, resolve_reference
from easel.models.vae import VaeSource
from easel.request import DEFAULT_STRENGTH, GenerationRequest
from easel.result import CancelToken, GenerationResult, Progress
from easel.schedulers import a1111_name_for, canonical_label, scheduler_spec

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.hires import HiresPass
    from easel.inpaint import InpaintJob
    from easel.previews import Previewer
    from easel.prompts.encoding import TokenCount
    from easel.upscalers import Upscalers


ProgressCallback = Callable[[Progress], None]


class Easel:
    """Generate images from GenerationRequests; cheap to call repeatedly (models are cached)."""

    def __init__(self, settings: Settings | None = None, *, cache: PipelineCache | None = None) -> None:
        quiet_import_notes()
        self.settings = settings or Settings()
        self.cache = cache if cache is not None else PipelineCache(self.settings.max_cached_models)
        # Pipelines, schedulers and fast tokenizers are not thread-safe: one run at a time.
        self._run_lock = threading.Lock()
        self._device: str | None = None  # resolved once (auto: cuda > mps > cpu)
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = threading.Lock()
        self._upscalers: Upscalers | None = None
        self._taesd: dict[tuple[str, str, str], Any] = {}  # TAESD preview decoders, loaded once

    # -- public API -------------------------------------------------------------------------

    @property
    def upscalers(self) -> Upscalers:
        """This engine's upscalers (built-in and model files), made on first use so that
        model upscalers load once and stay cached on the engine's device."""
        if self._upscalers is None:
            from easel.upscalers import Upscalers

            self._upscalers = Upscalers(
                self.settings.upscalers_folder,
                allow_pickle=self.settings.allow_pickle,
                device=self.device_and_dtype()[0],
            )
        return self._upscalers

    def upscale(
        self,
        image: Image,
        *,
        scale: float | None = None,
        width: int | None = None,
        height: int | None = None,
        upscaler: str = "Lanczos",
        limits: Limits | None = None,
    ) -> Image:
        """`image` made bigger with `upscaler` (a name from upscalers.names()): by `scale`, or
        to `width` x `height` (one of them alone keeps the aspect ratio). `limits` (a
        server's) bound the output's pixels."""
        from easel.upscalers import target_size

        size = target_size(image.size, scale=scale, width=width, height=height)
        limits = limits or Limits()
        if limits.max_pixels is not None and size[0] * size[1] > limits.max_pixels:
            raise InvalidRequest(
                f"invalid width x height={size[0]}x{size[1]}: more than this server's limit of "
                f"{limits.max_pixels} pixels; ask for a smaller scale or size",
                field="scale" if scale is not None else "width",
                value=scale if scale is not None else width,
            )
        return self.upscalers.upscale(image, size[0], size[1], upscaler)

    def resolve_model(self, model: str | None) -> ModelSource:
        """Where `model` (a --model value; None = bundled demo) lives, or ModelNotFound."""
        from easel.demo import demo_model_path

        return resolve_reference(
            model or "", default_folder=demo_model_path(), allow_pickle=self.settings.allow_pickle
        )

    def count_tokens(
        self, prompt: str, *, model: str | None = None, syntax: str = "compel", base_model: str | None = None
    ) -> TokenCount:
        """How many CLIP tokens and 75-token chunks `prompt` takes with `model`'s tokenizer (a
        transformer file's: its base model's, `base_model` or the one its tensor names say).

        Uses a tokenizer of its own (loaded once per model, files only, no weights), so a
        prompt box can count while a generation runs: fast tokenizers must not be shared
        between threads. An embedding named in the prompt counts its vectors (read from its
        file), as A1111 counts them.
        """
        from easel.models.embeddings import counted_embeddings, for_counting
        from easel.prompts.encoding import SYNTAXES, plan_prompt, token_count, window_count

        if syntax not in SYNTAXES:
            raise InvalidRequest(
                f"invalid prompt_syntax={syntax!r}: use one of {', '.join(SYNTAXES)}",
                field="prompt_syntax",
                value=syntax,
            )
        # prompt editing: the longest text the prompt reads at any step (of COUNTED_STEPS)
        texts = _scheduled_texts(prompt, syntax)
        plans = [plan_prompt(text, syntax) for text in texts]  # malformed syntax: refused at its position
        embeddings = counted_embeddings(prompt, self.settings.embeddings_folder)
        if embeddings:
            plans = [plan_prompt(for_counting(text, embeddings, tokens=False), syntax) for text in texts]
        source = with_transformer_base(self.resolve_model(model), base_model, self.resolve_model)
        window = detect_family(source).token_window()  # FLUX: (T5's folder, its window); None: CLIP chunks
        folder = None if window is None else window[0]
        key = source.location if folder is None else f"{source.location}#{folder}"
        with self._tokenizer_lock:
            tokenizer = self._tokenizers.get(key)
            if tokenizer is None:
                files = source.base if source.kind == "transformer" else source  # its tokenizers: the base's
                tokenizer = self._tokenizers[key] = _load_tokenizer(files, folder)
            if window is None:
                counts = [token_count(tokenizer, plan) for plan in plans]
            else:
                counts = [window_count(tokenizer, plan, window[1]) for plan in plans]
        longest = max(counts, key=lambda count: (count.chunks, count.tokens))
        return dataclasses.replace(longest, counted_with=source.display_name, vocabulary=len(tokenizer))

    def with_styles(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its prompt styles applied and `styles` emptied (re-validated, so a
        style's <lora:...> tags and lengths are checked as if typed); reading styles.csv is I/O,
        so it happens here, not in request validation."""
        if not request.styles:
            return request
        from easel.styles import apply_styles, load_styles

        prompt, negative = apply_styles(
            list(request.styles),
            request.prompt,
            request.negative_prompt,
            load_styles(self.settings.styles_path),
        )
        fields = {**request.model_dump(), "styles": []}
        return GenerationRequest.from_fields({**fields, "prompt": prompt, "negative_prompt": negative})

    def _identify(self, reference: str) -> tuple[ModelSource, Family]:
        """A companion model reference (a refiner, a prior) -> its source and family."""
        source = self.resolve_model(reference)
        return source, detect_family(source)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        limits: Limits | None = None,
        *,
        previews: int | None = None,
        preview_method: str | None = None,
    ) -> GenerationResult:
        """Make the images `request` describes.

        `previews` N > 0: every N steps (not after the last) `on_progress` gets a preview of
        the first image in Progress.preview, made by `preview_method` (auto | linear | taesd |
        none; default: the settings'), see easel.previews; the final pixels are the same.

        `cancel` is looked at before loading, after loading, after encoding the prompts and
        after every denoising step; `limits` (a server's) are checked on the concrete request,
        once defaults, sizes and the scheduler are known, before any denoising.
        """
        started = time.perf_counter()
        limits = limits or Limits()
        _stop_if_cancelled(cancel, "before loading")
        # 0. prompt styles (styles.csv) merged into the prompts; the recipe keeps the result
        request = self.with_styles(request)
        # 1. model reference -> source -> family (reads configs only, no weights)
        source = self.resolve_model(request.model)
        # a GGUF file's base model, and the quantisation: recorded in the request (replay loads alike)
        source, request = resolve_load_options(request, source, self.settings.quantize, self.resolve_model)
        family = detect_family(source)
        family.check_request(request)
        preview_method = self._preview_method(family, previews, preview_method)  # taesd: cached?
        if request.hires is not None:  # family and upscaler name, before any weights load
            from easel.hires import check_hires

            check_hires(self, family, request)
        # companion models the family needs (SDXL refiner, Kandinsky prior), resolved now
        companions = family.companions(request, source, self._identify)
        # control models (ControlNets), checked against the family from their configs
        controls = self._control_sources(request, family)
        # a VAE override (an AutoencoderKL), checked against the model's own VAE config
        vae = self._vae_source(request, source)
        # LoRA files, found and hashed (a recorded sha256 must match)
        loras = self._lora_files(request, family)
        if loras:
            request = request.model_copy(
                update={"loras": [spec.model_copy(update={"sha256": file.sha256}) for spec, file in loras]}
            )
        # textual-inversion embeddings the prompts name (A1111: their names as words), read and hashed
        embeddings = self._embedding_files(request, family)
        # 2. family defaults; the request validator re-checks steps x strength now
        given = {name for name in ("steps", "prior_steps", "width", "height") if getattr(request, name)}
        request = self._with_family_defaults(request, family)
        limits.check(request, defaulted=frozenset({"steps", "prior_steps"} - given))
        # 3. inputs that need I/O
        init_image = self._load_init_image(request)
        references = self._load_references(request)  # instruction editing (task edit)
        from easel.control.images import fit_control_inputs, load_control_inputs, process_control_inputs
        from easel.storage.gallery import inputs_folder

        control_inputs = load_control_inputs(request, stored_inputs=inputs_folder(self.settings.home))
        from easel.inpaint import check_inputs, load_mask

        mask = load_mask(request, stored_inputs=inputs_folder(self.settings.home))
        input_warnings = check_inputs(request, init_image, mask)  # mask shape, empty mask, canvas size
        device, dtype = self.device_and_dtype(family)
        options = dataclasses.replace(self.settings.performance, quantize=request.quantize or "none")
        check_options(options, device)
        check_quantize(options.quantize, device, source)
        from easel.tiling import check_tiling

        check_tiling(request.tiling, compiled=options.compile)
        with (
            self._run_lock,
            self.cache.lease(
                source,
                family,
                device=device,
                dtype=dtype,
                allow_pickle=self.settings.allow_pickle,
                options=options,
            ) as loaded,
            ExitStack() as leases,
        ):
            leased = {
                role: leases.enter_context(
                    self.cache.lease(
                        companion_source,
                        companion_family,
                        device=device,
                        dtype=dtype,
                        allow_pickle=self.settings.allow_pickle,
                        share_from=loaded,
                        options=options,
                    )
                )
                for role, (companion_source, companion_family) in companions.items()
            }
            controlnets = [
                self._lease_control(leases, loaded, index, control, mode=request.controls[index].mode)
                for index, control in enumerate(controls)
            ]
            vae_component = None if vae is None else self._lease_vae(leases, loaded, vae)
            self._activate_loras(loaded, loras)
            self._load_embeddings([loaded, *leased.values()], embeddings)
            loaded_at = time.perf_counter()
            if device == "cpu":
                self._set_cpu_threads(loaded)
            # 4. size: explicit, else the init image's, else the first control image's, else
            #    the model's native size; control images fitted to it, then preprocessed
            size_from = init_image if init_image is not None else next(iter(control_inputs), None)
            if references and (request.width is None or request.height is None):  # the family's rule
                width, height = loaded.family.edit_size(loaded.pipeline, references)
                sized = {"width": request.width or width, "height": request.height or height}
                request = GenerationRequest.from_fields({**request.model_dump(), **sized})
            request = self._with_size(request, loaded, size_from)
            limits.check(request, defaulted=frozenset({"width", "height"} - given))
            _stop_if_cancelled(cancel, "after loading")
            if init_image is not None:
                from easel.inpaint import init_size
                from easel.storage.images import fit_to_multiple_of_8

                # outpainting: the output size less the border
                init_image = fit_to_multiple_of_8(init_image, *init_size(request))
            assert request.width is not None and request.height is not None
            control_inputs = fit_control_inputs(control_inputs, request.width, request.height)
            control_images = process_control_inputs(request, control_inputs)
            # 5. task pipeline sharing the base weights, with its own scheduler
            pipe = self.task_pipeline(
                loaded,
                request,
                companions=leased,
                controlnets=[c.module for c in controlnets],
                vae=None if vae_component is None else vae_component.module,
            )
            # a named A1111 label as A1111 spells it (a schedule type such as SGM Uniform cannot be
            # read back from the config), else the label matching the scheduler that runs
            sampler = canonical_label(request.scheduler) or a1111_name_for(
                type(pipe.scheduler).__name__, dict(pipe.scheduler.config)
            )
            limits.check_evaluations(request, pipe.scheduler, sampler or type(pipe.scheduler).__name__)
            request = _with_scheduler_that_ran(request, sampler, leased.get("refiner"))
            inpaint = None
            if request.is_inpaint:  # the picture and mask the pipeline sees, and how to put it back
                from easel.inpaint import prepare

                assert init_image is not None
                native = loaded.family.default_size(loaded.pipeline)
                inpaint = prepare(request, init_image, mask, pipe, native)
                inpaint.install_latent_fill(pipe)
            # 6. run (hires fix: the first pass stops at latents, then upscale and a second pass)
            hires = None
            if request.hires is not None:
                hires = self._hires_pass(loaded, request, pipe, vae_component, on_progress, cancel, limits)
            previewer = self._previewer(previews, preview_method, pipe, loaded, device, dtype)
            if hires is not None:
                hires.previewer = previewer  # the second pass previews too
            output = self._run(
                family if hires is None else hires.first_family(family),
                pipe,
                request,
                init_image,
                on_progress if hires is None else hires.first_progress,
                cancel,
                leased,
                loaded.state,
                control_images if inpaint is None else inpaint.crop_controls(control_images),
                inpaint,
                previewer,
                references,
            )
            if hires is not None:
                output = hires.second_pass(output, family)
            if inpaint is not None:
                output.images = inpaint.compose(output.images, output.nsfw_content_detected)
        output.warnings[:0] = input_warnings
        finished = time.perf_counter()
        nsfw = output.nsfw_content_detected or [False] * len(output.images)
        return GenerationResult(
            images=list(output.images),
            request=request,
            nsfw=[bool(flag) for flag in nsfw],
            model_family=family.name,
            model_name=source.display_name,
            model_hashes={
                **self._model_hashes(loaded, controlnets, leased, vae_component),
                **{f"lora:{file.name}": file.a1111_hash for _, file in loras},
                **{f"ti:{file.name}": file.sha256 for file in embeddings},
            },
            sampler=sampler,
            timings={
                "load_s": loaded_at - started,  # resolve + (first time only) load weights
                "generate_s": finished - loaded_at,
                "total_s": finished - started,
            },
            init_image=init_image,
            mask_image=None if inpaint is None else inpaint.user_mask,
            # a dedicated inpainting UNet saw the mask and masked image (A1111's flag of that name)
            inpainting_conditioning=inpaint is not None
            and getattr(getattr(pipe, "unet", None), "config", {}).get("in_channels") == 9,
            warnings=list(output.warnings),
            control_inputs=control_inputs,
            control_images=control_images,
            reference_images=references,
            family_parameters=family.a1111_parameters(request),  # FLUX: "Distilled CFG Scale"
        )

    def _hires_pass(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        pipe: Any,
        vae: LoadedComponent | None,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
        limits: Limits,
    ) -> HiresPass:
        """The hires fix of `request` (see easel.hires)."""
        from easel.hires import HiresPass

        return HiresPass(self, loaded, request, first_pipe=pipe, vae=None if vae is None else vae.module,
                         on_progress=on_progress, cancel=cancel, limits=limits)  # fmt: skip

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        limits: Limits | None = None,
        **options: Any,
    ) -> list[GenerationResult]:
        """Make the images of several compatible requests (easel.batching.batch_key) in one
        pipeline call; one result per request, in order, each as if it ran alone (its own
        concrete request, seeds and generators; pixels may differ from a solo run in the last
        bits, see easel.batching). Progress and `cancel` are the batch's; `limits` apply to
        each request, and the batch's images together stay within max_images. `options` are
        generate's (previews: of the first request's first image)."""
        from easel.batching import generate_batch

        return generate_batch(self, requests, on_progress, cancel, limits, **options)

    def replay(
        self,
        image_path: str | Path,
        overrides: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> tuple[GenerationResult, int]:
        """Make an easel image again from the recipe it carries; returns the result and the
        index of the replayed image in it. `overrides` replace request fields (a new seed)."""
        from easel.storage.metadata import read_metadata, request_from_document

        metadata = read_metadata(image_path)
        if metadata.document is None:
            why = " (only A1111 parameters, which do not say everything)" if metadata.parameters else ""
            raise InvalidRequest(
                f"invalid image={str(image_path)!r}: it carries no easel recipe{why}",
                field="image",
                value=str(image_path),
            )
        request, index = request_from_document(metadata.document, overrides)
        if request.quantize is None:  # recorded None: it ran unquantised (not: the settings' default)
            request = request.model_copy(update={"quantize": "none"})
        hashes = (metadata.document.get("model") or {}).get("hashes") or {}
        self._check_recorded_embeddings(request, {k[3:]: v for k, v in hashes.items() if k.startswith("ti:")})
        return self.generate(request, on_progress=on_progress), index

    def _check_recorded_embeddings(self, request: GenerationRequest, recorded: dict[str, str]) -> None:
        """Refuse to replay with an embedding whose file changed (or went) since the image was
        made, naming it, rather than make a different image."""
        from easel.models.embeddings import names_in

        used = names_in([("prompt", request.prompt), ("negative_prompt", request.negative_prompt)], recorded)
        if not used:
            return
        found = {
            file.name: file
            for file in self._embedding_files(request, detect_family(self.resolve_model(request.model)))
        }
        for name, field in used:
            file = found.get(name)
            if file is None or file.sha256 != recorded[name]:
                now = (
                    "is no longer in the embeddings folder"
                    if file is None
                    else f"has sha256 {file.sha256[:12]}..."
                )
                raise InvalidRequest(
                    f"invalid {field}: the embedding {name!r} {now}, not the {recorded[name][:12]}... this "
                    "image was made with (the file changed?)",
                    field=field,
                    value=name,
                )

    def task_pipeline(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        companions: Mapping[str, LoadedModel] | None = None,
        controlnets: Sequence[Any] = (),
        vae: Any = None,
    ) -> Any:
        """The pipeline for this request's task, built on the cached base with from_pipe
        (and on the leased companions, for families that combine models; with the leased
        `controlnets`, the family's ControlNet pipeline; with a leased `vae`, that VAE in place
        of the base's own, which stays in the cached base untouched)."""
        from easel.schedulers import build_scheduler

        base = loaded.pipeline
        task = request.task
        overrides: dict[str, Any] = {"scheduler": build_scheduler(request.scheduler, base.scheduler)}
        if not request.safety_checker and getattr(base, "safety_checker", None) is not None:
            overrides.update(safety_checker=None, requires_safety_checker=False)
        if controlnets:
            overrides["controlnet"] = list(controlnets)
        if vae is not None:
            overrides["vae"] = vae
        with dtype_casts_skipped(base):  # from_pipe's .to(dtype) would refuse quantised modules
            pipe = loaded.family.derive(base, task, companions=companions or {}, **overrides)
        pipe.set_progress_bar_config(disable=True)
        prepare_task(pipe, self.settings.performance, self.device_and_dtype()[0])
        return pipe

    # -- steps --------------------------------------------------------------------------------

    def device_and_dtype(self, family: Family | None = None) -> tuple[str, Any]:
        """The device, and the dtype models of `family` load in (dtype "auto" on a GPU: the
        family's accelerator_dtype). Public: `easel bench` and the hires fix place what they
        build by the engine's own rule."""
        from easel.devices import resolve_device, resolve_dtype

        if self._device is None:
            self._device = resolve_device(self.settings.device)
        device = self._device
        preferred = "float16" if family is None else family.accelerator_dtype
        return device, resolve_dtype(self.settings.dtype, device, preferred)

    def _model_hashes(
        self,
        loaded: LoadedModel,
        controlnets: Sequence[LoadedComponent] = (),
        companions: Mapping[str, LoadedModel] | None = None,
        vae: LoadedComponent | None = None,
    ) -> dict[str, str]:
        """sha256 of each component's weights, computed once per loaded model: "base", the
        companions by role ("refiner", "prior"), control models as control_0, control_1, ...,
        a VAE override as "vae"."""
        from easel.models.hashing import sha256_of, weights_file

        cache_file = self.settings.home / "hashes.json"
        for model in (loaded, *(companions or {}).values()):
            if model.hashes is None:
                weights = weights_file(model.source)
                model.hashes = {} if weights is None else {"base": sha256_of(weights, cache_file)}
        hashes = dict(loaded.hashes or {})
        for role, companion in (companions or {}).items():
            if companion.hashes and "base" in companion.hashes:
                hashes[role] = companion.hashes["base"]
        for index, control in enumerate(controlnets):
            if control.hashes is None:
                from easel.models.control import control_weights_file

                weights = control_weights_file(control.source)
                control.hashes = {} if weights is None else {"weights": sha256_of(weights, cache_file)}
            if "weights" in control.hashes:
                hashes[f"control_{index}"] = control.hashes["weights"]
        if vae is not None and vae.hashes and "weights" in vae.hashes:  # hashed when leased
            hashes["vae"] = vae.hashes["weights"]
        return hashes

    def _control_sources(self, request: GenerationRequest, family: Family) -> list[ControlSource]:
        """Each unit's control model, resolved, and refused when made for another family."""
        from easel.models.control import resolve_control

        sources = []
        for index, unit in enumerate(request.controls):
            control = resolve_control(
                unit.model, field=f"controls[{index}].model", allow_pickle=self.settings.allow_pickle
            )
            family.check_control(index, unit.model, control.config, mode=unit.mode)
            sources.append(control)
        return sources

    def _lora_files(self, request: GenerationRequest, family: Family) -> list[tuple[Any, Any]]:
        """(spec, LoraFile) per requested LoRA: found, hashed and checked against a recorded
        sha256, before any weights load."""
        if not request.loras:
            return []
        from easel.models.lora import lora_file, resolve_lora

        family.check_loras(request)
        files = []
        for index, spec in enumerate(request.loras):
            field = f"loras[{index}].name"
            folder, allow_pickle = self.settings.loras_folder, self.settings.allow_pickle
            path = resolve_lora(spec.name, folder=folder, allow_pickle=allow_pickle, field=field)
            file = lora_file(spec.name, path, self.settings.home / "hashes.json")
            if spec.sha256 is not None and spec.sha256 != file.sha256:
                raise InvalidRequest(
                    f"invalid {field}={spec.name!r}: {path} has sha256 {file.sha256[:12]}..., not the "
                    f"{spec.sha256[:12]}... this request was made with (the file changed?)",
                    field=field,
                    value=spec.name,
                )
            files.append((spec, file))
        return files

    @staticmethod
    def _activate_loras(loaded: LoadedModel, loras: list[tuple[Any, Any]]) -> None:
        """This run's LoRAs (and weights) on the cached base, or none: adapters are switched,
        never fused, so the base weights stay as loaded."""
        if not loras and not loaded.state.get("lora_adapters"):
            return
        from easel.models.lora import activate, check_fits

        denoiser = _denoiser(loaded.pipeline)
        unet_config = dict(denoiser.config)
        for index, (_, file) in enumerate(loras):
            check_fits(file, unet_config, loaded.family.name, field=f"loras[{index}].name")
        chosen = [(file, spec.weight) for spec, file in loras]
        activate(loaded.pipeline, loaded.state, chosen, loaded.family.name)

    def _embedding_files(self, request: GenerationRequest, family: Family) -> list[Any]:
        """The embeddings (EmbeddingFile) whose names the prompt or negative prompt use as words,
        read (vector count, widths) and hashed before any weights load; a family without
        textual inversion refuses them, naming the field, rather than drawing the name as text."""
        from easel.models.embeddings import EmbeddingError, EmbeddingFile, describe, embedding_files, names_in
        from easel.models.embeddings import refusal as embedding_refusal
        from easel.models.hashing import sha256_of

        files = embedding_files(self.settings.embeddings_folder)
        texts = [("prompt", request.prompt), ("negative_prompt", request.negative_prompt)]
        if request.hires is not None:  # the hires fix's own prompts may name embeddings too
            for name in ("prompt", "negative_prompt"):
                texts.append((f"hires.{name}", getattr(request.hires, name) or ""))
        used = names_in(texts, files) if files else []
        family.check_embeddings(used)
        found = []
        for name, field in used:
            path = files[name]
            try:
                info = describe(path)
            except EmbeddingError as error:
                raise embedding_refusal(name, path, field, str(error)) from None
            sha256 = sha256_of(path, self.settings.home / "hashes.json")
            found.append(EmbeddingFile(name, path, sha256, info, field))
        return found

    @staticmethod
    def _load_embeddings(models: Sequence[LoadedModel], files: list[Any]) -> None:
        """Load this run's embeddings into every leased model whose family takes them (once per
        model: a token already in a tokenizer is not loaded again) and tell the prompt encoding
        which names this run replaces by which token (none: nothing is replaced)."""
        from easel.models.embeddings import ACTIVE_KEY, LOADED_KEY, load

        for model in models:
            if not model.family.embeddings:
                continue
            if files:
                pipe = model.pipeline
                load(pipe, model.family.embedding_targets(pipe), files, model.family.name)
                model.state.setdefault(LOADED_KEY, {}).update({file.token: file for file in files})
            model.state[ACTIVE_KEY] = {file.name.lower(): (file.token, file.info.vectors) for file in files}

    def _lease_control(
        self, leases: ExitStack, loaded: LoadedModel, index: int, control: ControlSource, *, mode: Any = None
    ) -> LoadedComponent:
        """Lease unit `index`'s ControlNet from the cache, after checking it fits the loaded
        denoiser (UNet or transformer; single files, whose config is known only once loaded, are
        checked after), with the unit's union `mode`."""
        from easel.models.control import load_control

        family = loaded.family
        unet_config = family.control_base_config(loaded.pipeline)
        family.check_control(index, control.source.reference, control.config, unet_config, mode=mode)
        # a folder's or repo's config names its class; a single file is the family's own
        class_name = str((control.config or {}).get("_class_name") or family.control_classes[0])
        device, dtype = self.device_and_dtype(loaded.family)
        # with CPU offload the task pipeline's hooks move it, like the base's modules
        placement = device if self.settings.performance.offload == "none" else "cpu"
        component = leases.enter_context(
            self.cache.lease_component(
                "controlnet",
                control.source,
                device=device,
                dtype=dtype,
                load=lambda: load_control(
                    control.source,
                    dtype=dtype,
                    device=placement,
                    allow_pickle=self.settings.allow_pickle,
                    class_name=class_name,
                ),
            )
        )
        if control.config is None:
            family.check_control(
                index, control.source.reference, dict(component.module.config), unet_config, mode=mode
            )
        return component

    def _vae_source(self, request: GenerationRequest, source: ModelSource) -> VaeSource | None:
        """The request's VAE override, resolved and refused (naming `vae`) when the model takes
        none or its latent space differs, before any weights load."""
        if request.vae is None:
            return None
        from easel.models.vae import base_vae_config, check_fits, resolve_vae

        base_config = base_vae_config(source)  # refuses models without an AutoencoderKL (Kandinsky)
        vae = resolve_vae(request.vae, allow_pickle=self.settings.allow_pickle)
        check_fits(request.vae, vae.config, base_config)
        return vae

    def _lease_vae(self, leases: ExitStack, loaded: LoadedModel, vae: VaeSource) -> LoadedComponent:
        """Lease the VAE override from the cache (checked against the loaded base's VAE first;
        a single file takes that VAE's configuration, so it is cached per configuration) and
        hash its weights once."""
        import json

        from easel.models.hashing import sha256_of
        from easel.models.optimizations import prepare_vae
        from easel.models.vae import check_fits, load_vae, vae_weights_file

        own = getattr(loaded.pipeline, "vae", None)
        if own is None:
            error = UnsupportedFeature(
                f"vae={vae.source.reference!r}: {loaded.source.display_name} has no VAE to replace"
            )
            error.field = "vae"  # type: ignore[attr-defined]
            raise error
        base_config = dict(own.config)
        check_fits(vae.source.reference, vae.config, base_config)
        device, dtype = self.device_and_dtype(loaded.family)
        options = self.settings.performance
        # with CPU offload the task pipeline's hooks move it, like the base's modules
        placement = device if options.offload == "none" else "cpu"

        def load() -> Any:
            module = load_vae(
                vae,
                dtype=dtype,
                device=placement,
                allow_pickle=self.settings.allow_pickle,
                base_config=base_config,
            )
            prepare_vae(module, options)  # slicing, tiling, attention: as the base's VAE has them
            return module

        variant = repr(options)
        if vae.source.kind == "single_file":
            variant += json.dumps(base_config, sort_keys=True, default=str)
        component = leases.enter_context(
            self.cache.lease_component(
                "vae", vae.source, device=device, dtype=dtype, load=load, variant=variant
            )
        )
        if vae.source.kind != "single_file":
            check_fits(vae.source.reference, dict(component.module.config), base_config)
        if component.hashes is None:
            weights = vae_weights_file(vae.source, vae.subfolder)
            cache_file = self.settings.home / "hashes.json"
            component.hashes = {} if weights is None else {"weights": sha256_of(weights, cache_file)}
        return component

    def _preview_method(self, family: Family, previews: int | None, method: str | None) -> str:
        """The preview method this run uses ("none" when previews are off), checked before
        loading: "taesd" is refused when the family's TAESD is not in the HF cache."""
        from easel.previews import check_method, resolve_method

        method = method or self.settings.preview_method
        check_method(method)
        if not previews or previews < 0 or method == "none":
            return "none"
        return resolve_method(method, family.name)

    def _previewer(
        self, previews: int | None, method: str, pipe: Any, loaded: LoadedModel, device: str, dtype: Any
    ) -> Previewer | None:
        """The run's previewer (None: off); a TAESD decoder is loaded once and kept on the engine."""
        from easel.previews import load_taesd, make_previewer, taesd_repo

        if not previews or method == "none":
            return None

        def taesd() -> Any:
            repo = taesd_repo(loaded.family.name)
            assert repo is not None  # resolve_method refused the family otherwise
            key = (repo, str(device), str(dtype))
            if key not in self._taesd:
                self._taesd[key] = load_taesd(repo, device, dtype)
            return self._taesd[key]

        return make_previewer(previews, method, pipe, loaded.state, taesd)

    def _set_cpu_threads(self, loaded: LoadedModel) -> None:
        """torch's thread count is process state: set it from the settings and model size."""
        import torch

        from easel.devices import cpu_threads_for

        denoiser = _denoiser(loaded.pipeline)
        unet_parameters = sum(p.numel() for p in denoiser.parameters())
        threads = cpu_threads_for(unet_parameters, self.settings.threads)
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    @staticmethod
    def _with_family_defaults(request: GenerationRequest, family: Family) -> GenerationRequest:
        fields = request.model_dump()
        if fields["steps"] is None:
            fields["steps"] = family.default_steps
        if fields["guidance_scale"] is None:
            fields["guidance_scale"] = family.default_guidance
        for name, value in family.field_defaults(request).items():
            if fields[name] is None:
                fields[name] = value
        if request.is_img2img and fields["strength"] is None:
            fields["strength"] = DEFAULT_STRENGTH
        if fields["seed"] is None:
            fields["seed"] = secrets.randbelow(2**32)
        if fields["variation_seed"] is None and fields["variation_strength"] > 0:  # A1111's subseed -1
            fields["variation_seed"] = secrets.randbelow(2**32)
        return GenerationRequest.from_fields(fields)

    def _load_init_image(self, request: GenerationRequest) -> Image | None:
        if request.init_image is None:
            return None
        from easel.storage.gallery import inputs_folder
        from easel.storage.images import load_image

        return load_image(
            request.init_image, field="init_image", stored_inputs=inputs_folder(self.settings.home)
        )

    def _load_references(self, request: GenerationRequest) -> list[Image]:
        """The reference images of an edit, read as init_image is (paths, URLs, data URLs, stored
        inputs, the same pixel limit); errors name reference_images[i]."""
        if not request.reference_images:
            return []
        from easel.storage.gallery import inputs_folder
        from easel.storage.images import load_image

        folder = inputs_folder(self.settings.home)
        return [
            load_image(reference, field=f"reference_images[{index}]", stored_inputs=folder)
            for index, reference in enumerate(request.reference_images)
        ]

    @staticmethod
    def _with_size(
        request: GenerationRequest, loaded: LoadedModel, init_image: Image | None
    ) -> GenerationRequest:
        if request.width is not None and request.height is not None:
            return request
        if init_image is not None:
            from easel.inpaint import canvas_size

            default = canvas_size(request, init_image.width, init_image.height)  # + outpaint
        else:
            default = loaded.family.default_size(loaded.pipeline)
        return GenerationRequest.from_fields(
            {
                **request.model_dump(),
                "width": request.width or default[0],
                "height": request.height or default[1],
            }
        )

    @staticmethod
    def _run(
        family: Family,
        pipe: Any,
        request: GenerationRequest,
        init_image: Image | None,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
        companions: Mapping[str, LoadedModel],
        state: dict[str, Any],
        control_images: list[Image] | None = None,
        inpaint: InpaintJob | None = None,
        previewer: Previewer | None = None,
        references: list[Image] | None = None,
    ) -> RunOutput:
        import torch

        assert request.seed is not None
        generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.num_images)]

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after step {step + 1}")
            if on_progress is not None:
                total = int(pipeline.num_timesteps)
                preview = None if previewer is None else previewer(step + 1, total, tensors)
                on_progress(Progress(step + 1, total, preview=preview))
            return tensors

        kwargs = family.call_arguments(pipe, request, init_image if inpaint is None else inpaint.image)
        if inpaint is not None:
            kwargs.update(inpaint.arguments())
        if references:  # instruction editing: the family's reference-image arguments
            kwargs.update(family.edit_arguments(pipe, request, references))
        kwargs.update(family.control_arguments(request, control_images or [], img2img=init_image is not None))
        kwargs.update(generator=generators, callback_on_step_end=on_step_end)
        if request.eta is not None:  # DDIM's eta (the request validator allows it only with DDIM)
            import inspect

            if "eta" not in inspect.signature(pipe.__call__).parameters:
                raise UnsupportedFeature(
                    f"invalid eta={request.eta!r}: the {type(pipe).__name__} pipeline takes no eta"
                )
            kwargs["eta"] = request.eta
        from easel.noise import initial_latents
        from easel.tiling import seamless

        latents = initial_latents(pipe, request, generators)  # variation seeds; None: the pipeline's own
        if latents is not None:
            kwargs["latents"] = latents
        prompt_warnings = family.apply_prompts(pipe, request, kwargs, state)
        from easel.batching import merge_batch

        merge_batch(family, pipe, request, kwargs, state)  # generate_batch: the others join this call
        _stop_if_cancelled(cancel, "after encoding the prompts, before the first step")
        try:
            tiled = [pipe, *(companion.pipeline for companion in companions.values())]
            with torch.inference_mode(), seamless(request.tiling, tiled):
                output = family.run(pipe, kwargs, request=request, companions=companions)
            output.warnings[:0] = prompt_warnings
            return output
        except EaselError:
            raise
        except torch.OutOfMemoryError as error:
            _free_accelerator_memory()
            raise GenerationFailed(
                f"out of memory generating {request.num_images} image(s) at "
                f"{request.width}x{request.height}; try fewer images, a smaller size, or CPU offload"
            ) from error
        except ValueError as error:  # diffusers' own check_inputs: our second line
            raise InvalidRequest(f"invalid request: {error}") from error
        except Exception as error:
            raise GenerationFailed(f"generation failed: {type(error).__name__}: {error}") from error


COUNTED_STEPS = 150  # prompt editing is counted over this many steps (the server's default step limit)


def _scheduled_texts(prompt: str, syntax: str) -> list[str]:
    """Every text `prompt` reads at some step (one, unless it uses prompt editing or alternation)."""
    from easel.prompts.a1111 import PromptSyntaxError
    from easel.prompts.scheduling import prompt_schedule

    try:
        schedule = prompt_schedule(prompt, syntax, COUNTED_STEPS)
    except PromptSyntaxError as error:
        raise InvalidRequest(f"invalid prompt: {error}", field="prompt", value=prompt) from None
    return list(dict.fromkeys(text for _, text in schedule))


def _load_tokenizer(source: ModelSource, folder: str | None = None) -> Any:
    """The model's first CLIP tokenizer, from its files (the `tokenizer` folder), or the one in
    `folder` (FLUX's T5: tokenizer_2), of the class model_index.json names for it."""
    import transformers

    if source.kind == "single_file":
        raise UnsupportedFeature(
            "token counting needs a diffusers folder or repo, not a single checkpoint file"
        )
    try:
        if folder is not None:
            declared = (source.read_model_index() or {}).get(folder) or [None, "AutoTokenizer"]
            tokenizer_class = getattr(transformers, str(declared[-1]), transformers.AutoTokenizer)
            return tokenizer_class.from_pretrained(source.location, subfolder=folder)
        return transformers.CLIPTokenizer.from_pretrained(source.location, subfolder="tokenizer")
    except (OSError, ValueError) as error:
        raise UnsupportedFeature(
            f"model {source.reference!r} has no {folder or 'CLIP'} tokenizer to count with ({error})"
        ) from None


def _with_scheduler_that_ran(
    request: GenerationRequest, sampler: str, refiner: LoadedModel | None
) -> GenerationRequest:
    """The concrete request names the scheduler the model's default turned out to be (its
    A1111 sampler name, else its diffusers class), so the recipe says what ran.

    Only where naming it builds the very same schedulers again (build_scheduler from the same
    configs), so replay stays byte-identical: a name easel accepts, and an SDXL refiner, which
    would then get the named scheduler instead of its own default, of that same kind."""
    if request.scheduler is not None or scheduler_spec(sampler) is None:
        return request
    if refiner is not None:
        own = refiner.pipeline.scheduler
        if a1111_name_for(type(own).__name__, dict(own.config)) != sampler:
            return request
    return request.model_copy(update={"scheduler": sampler})


def _stop_if_cancelled(cancel: CancelToken | None, stage: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"cancelled {stage}")


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _denoiser(pipe: Any) -> Any:
    """The pipeline's UNet, or its transformer (FLUX, SD 3.5). Tested against None, not for
    truth: a torch.compile'd module has no len() and raises on bool()."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer
