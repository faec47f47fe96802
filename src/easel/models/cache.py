"""PipelineCache: each base pipeline is loaded once per (source, device, dtype).

Task pipelines (img2img, later ControlNet) are derived from the cached base with from_pipe,
so they share the very same weight tensors; the base is never mutated by a request (each
request gets its own scheduler through from_pipe). Models are leased through a context
manager so eviction never frees a pipeline a request is still using.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from easel.config import PerformanceOptions
from easel.errors import InvalidRequest, ModelNotFound, UnsupportedFeature
from easel.families import family_for_checkpoint, family_for_index
from easel.families.base import Family
from easel.models.reference import ModelSource


@dataclass
class LoadedModel:
    """A loaded base pipeline and what easel knows about it."""

    source: ModelSource
    family: Family
    pipeline: Any
    load_seconds: float
    leases: int = field(default=0)
    hashes: dict[str, str] | None = None  # filled on first use by the engine
    state: dict[str, Any] = field(default_factory=dict)  # family scratch space (prompt encoder)


@dataclass
class LoadedComponent:
    """A loaded model component used beside base pipelines (a ControlNet): one module,
    cached by (kind, source, device, dtype) so every pipeline derived with it shares it."""

    kind: str
    source: ModelSource
    module: Any
    load_seconds: float
    leases: int = field(default=0)
    hashes: dict[str, str] | None = None  # filled on first use by the engine


def detect_family(source: ModelSource) -> Family:
    """The family of a source, from model_index.json or the checkpoint's tensor names (a transformer
    file: its base model's family)."""
    if source.kind == "transformer":
        if source.base is None:  # Easel.generate attaches it (easel.models.quantize.with_transformer_base)
            raise InvalidRequest(
                f"invalid model={source.reference!r}: a transformer file needs its base model (base_model)",
                field="base_model",
            )
        return detect_family(source.base)
    index = source.read_model_index()
    if index is not None:
        return family_for_index(index).variant(source)  # FLUX.1 dev / schnell: the transformer's config
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    try:
        if source.location.lower().endswith(".safetensors"):
            with _LazyCheckpoint(source.location) as checkpoint:
                model_type = infer_diffusers_model_type(checkpoint)
        else:  # a pickle the user explicitly allowed
            model_type = infer_diffusers_model_type(load_single_file_checkpoint(source.location))
    except Exception as error:
        raise InvalidRequest(
            f"invalid model={source.reference!r}: not a readable checkpoint ({error})",
            field="model",
            value=source.reference,
        ) from None
    try:
        return family_for_checkpoint(model_type)
    except UnsupportedFeature:
        from easel.models.quantize import WHAT_LOADS, refusal

        raise refusal(
            "model",
            f"model={source.reference!r} is a single-file checkpoint of type {model_type!r}, which easel "
            f"does not load; what loads: {WHAT_LOADS}",
        ) from None


class _LazyCheckpoint(Mapping[str, Any]):
    """A safetensors file as a read-only mapping that loads a tensor only when asked."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        self._file = safe_open(path, framework="pt")

    def __enter__(self) -> _LazyCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file = None

    def __getitem__(self, key: str) -> Any:
        if key not in self._file.keys():  # noqa: SIM118 - safe_open is no dict
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.keys())

    def __len__(self) -> int:
        return len(self._file.keys())


class PipelineCache:
    """Loaded base pipelines, least recently used evicted beyond `max_entries`."""

    def __init__(self, max_entries: int = 2) -> None:
        self._max_entries = max(1, max_entries)
        self._entries: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
        # components (ControlNets) are small beside a base; a few more of them stay loaded
        self._max_components = 2 * self._max_entries + 2
        self._components: OrderedDict[tuple[str, ...], LoadedComponent] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def loaded(self) -> list[LoadedModel]:
        """What is in memory now, least recently used first (for status pages and tests)."""
        with self._lock:
            return list(self._entries.values())

    @contextmanager
    def lease(
        self,
        source: ModelSource,
        family: Family,
        *,
        device: str,
        dtype: Any,
        allow_pickle: bool,
        share_from: LoadedModel | None = None,
        options: PerformanceOptions | None = None,
    ) -> Iterator[LoadedModel]:
        """Yield the loaded base pipeline for `source`, loading it on first use.

        `share_from`: the model this one is a companion of (an SDXL base for its refiner);
        the family picks the modules it can take from it instead of loading its own, and
        such a model is cached apart from the same model loaded on its own.
        """
        options = options or PerformanceOptions()
        key = _base_key(source, device, dtype, options)
        components: dict[str, Any] = {}
        if share_from is not None:
            components = family.shared_components(source, share_from.pipeline)
            if components:
                key += (f"beside {share_from.source.kind}:{share_from.source.location}",)

        def load() -> LoadedModel:
            return _load(
                source,
                family,
                device=device,
                dtype=dtype,
                allow_pickle=allow_pickle,
                components=components,
                options=options,
            )

        with self._leased(self._entries, key, load) as entry:
            yield entry

    def adopt(
        self,
        source: ModelSource,
        family: Family,
        pipeline: Any,
        *,
        device: str,
        dtype: Any,
        options: PerformanceOptions | None = None,
    ) -> LoadedModel:
        """Cache an already built base pipeline as if `lease` had loaded it from `source`, prepared
        the same way (placement, attention, channels_last, compile); later leases of `source` with
        this device, dtype and options get it. Why: `easel bench --architecture` builds models of
        tens of GB with random weights in memory; writing them out only to load them back would
        measure the disk (and could fill it)."""
        from easel.models.optimizations import prepare_loaded

        options = options or PerformanceOptions()
        started = time.perf_counter()
        prepare_loaded(pipeline, options, device)
        pipeline.set_progress_bar_config(disable=True)
        entry = LoadedModel(source, family, pipeline, time.perf_counter() - started)
        key = _base_key(source, device, dtype, options)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict()
        return entry

    def components(self) -> list[LoadedComponent]:
        """Loaded components (ControlNets), least recently used first."""
        with self._lock:
            return list(self._components.values())

    @contextmanager
    def lease_component(
        self,
        kind: str,
        source: ModelSource,
        *,
        device: str,
        dtype: Any,
        load: Callable[[], Any],
        variant: str = "",
    ) -> Iterator[LoadedComponent]:
        """Yield the `kind` component (e.g. "controlnet", "vae") loaded from `source`, calling
        `load()` on first use. Leased like pipelines, so eviction never frees one in use.
        `variant` keeps apart what one source loads as differently (a single-file VAE takes the
        configuration of the base it is loaded for)."""
        key = (kind, f"{source.kind}:{source.location}", device, str(dtype), variant)

        def loaded_component() -> LoadedComponent:
            started = time.perf_counter()
            module = load()
            return LoadedComponent(kind, source, module, time.perf_counter() - started)

        with self._leased(self._components, key, loaded_component) as entry:
            yield entry

    @contextmanager
    def _leased(
        self, table: OrderedDict[tuple[str, ...], Any], key: tuple[str, ...], make: Callable[[], Any]
    ) -> Iterator[Any]:
        """The one leasing rule for pipelines and components: load on first use (under the
        lock, so two requests never load the same model twice), count the lease while it is
        held, evict least recently used entries that nobody holds."""
        with self._lock:
            entry = table.get(key)
            if entry is None:
                entry = table[key] = make()
            table.move_to_end(key)
            entry.leases += 1
            self._evict()
        try:
            yield entry
        finally:
            with self._lock:
                entry.leases -= 1
                self._evict()

    def _evict(self) -> None:
        for key in list(self._components):
            if len(self._components) <= self._max_components:
                break
            if self._components[key].leases == 0:
                del self._components[key]
        for key in list(self._entries):
            if len(self._entries) <= self._max_entries:
                return
            if self._entries[key].leases == 0:
                del self._entries[key]


def _base_key(source: ModelSource, device: str, dtype: Any, options: PerformanceOptions) -> tuple[str, ...]:
    """The cache key of a base pipeline: one entry per (source, device, dtype, options); options
    include the quantisation, and a transformer file's key its base model."""
    base = "" if source.base is None else f" on {source.base.kind}:{source.base.location}"
    return (f"{source.kind}:{source.location}{base}", device, str(dtype), repr(options))


def _load(
    source: ModelSource,
    family: Family,
    *,
    device: str,
    dtype: Any,
    allow_pickle: bool,
    components: dict[str, Any] | None = None,
    options: PerformanceOptions,
) -> LoadedModel:
    """Load the family's base pipeline and prepare it; loader errors become EaselErrors."""
    from easel.models.optimizations import prepare_loaded, variant_for

    started = time.perf_counter()
    variant = variant_for(options, dtype)
    with no_loading_bars():
        pipe = _load_pipeline(
            source,
            family,
            dtype=dtype,
            allow_pickle=allow_pickle,
            components=components,
            options=options,
            variant=variant,
        )
    prepare_loaded(pipe, options, device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(source, family, pipe, time.perf_counter() - started)


# Loggers that speak when a library is imported rather than when easel loads a model: torchao
# (a quantization backend diffusers imports whenever it is installed) reports every optional CUDA
# kernel it cannot load on a CPU-only machine, and torch notes a deprecation about torchao's enums.
IMPORT_NOTE_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_import_notes() -> None:
    """Keep import-time notes of optional backends off a normal run's terminal (warnings and
    below; errors still show). Called before anything imports diffusers; EASEL_DEBUG=1 keeps them."""
    import logging as std_logging
    import os

    if os.environ.get("EASEL_DEBUG"):
        return
    for name in IMPORT_NOTE_LOGGERS:
        std_logging.getLogger(name).setLevel(std_logging.ERROR)


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """diffusers and transformers draw tqdm bars while loading; progress is the engine's to
    report (through its callback), so the bars are off while easel loads, restored afterwards.
    Their loading notes go too (warnings and below: "requires torchvision; falling back to ...",
    "Could not reach the Hub ... using the cache"), for the Python API as for the CLI; errors
    still reach the user, as easel's exceptions. EASEL_DEBUG=1 (the CLI's --debug) keeps them."""
    import logging as std_logging
    import os

    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    if os.environ.get("EASEL_DEBUG"):
        yield
        return
    # transformers draws its own ("Loading weights") for the text encoders
    was_enabled = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    libraries = (diffusers_logging, transformers_logging, hub_logging)
    levels = [library.get_verbosity() for library in libraries]  # the standard library's levels
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for library, level in zip(libraries, levels, strict=True):
        library.set_verbosity(max(level, std_logging.ERROR))
    try:
        yield
    finally:
        for library, level in zip(libraries, levels, strict=True):
            library.set_verbosity(level)
        if was_enabled[0]:
            diffusers_logging.enable_progress_bar()
        if was_enabled[1]:
            transformers_logging.enable_progress_bar()


def _load_pipeline(
    source: ModelSource,
    family: Family,
    *,
    dtype: Any,
    allow_pickle: bool,
    components: dict[str, Any] | None,
    options: PerformanceOptions,
    variant: str | None,
) -> Any:
    """The family's loader with easel's fallbacks; loader errors become EaselErrors. A GGUF
    transformer (or another transformer file) loads first, and the rest of the pipeline from its base
    model; `options.quantize` quantises the rest as it loads (easel.models.quantize)."""
    from easel.models.quantize import load_transformer_file, pipeline_quantization

    try:
        target, components = source, dict(components or {})
        if source.kind == "transformer" and source.base is not None:
            name, transformer = load_transformer_file(source, dtype)
            components[name] = transformer
            target = source.base
        quantization = pipeline_quantization(
            options.quantize, target.read_model_index() or {}, dtype, shared=components
        )
        quantized = {} if quantization is None else {"quantization_config": quantization}
        try:
            loader_options = {} if variant is None else {"variant": variant}
            pipe = family.load_pipeline(
                target, dtype=dtype, allow_pickle=allow_pickle, components=components, **loader_options,
                **quantized,
            )  # fmt: skip
        except (OSError, ValueError) as error:
            if variant is None or options.variant != "auto" or "variant" not in str(error):
                raise
            # no fp16 files in this repository: the full-precision files, cast on load
            pipe = family.load_pipeline(
                target, dtype=dtype, allow_pickle=allow_pickle, components=components, **quantized
            )
    except OSError as error:
        message = str(error)
        if "safetensors" in message.lower() and not allow_pickle:
            raise InvalidRequest(
                f"invalid model={source.reference!r}: it has no .safetensors weights, only pickle "
                "files that can run code when loaded; pass --allow-pickle if you trust it",
                field="model",
                value=source.reference,
            ) from None
        raise ModelNotFound(
            f"could not load model {source.reference!r} from {source.location}: {message}"
        ) from None
    except (ValueError, KeyError, RuntimeError) as error:
        raise UnsupportedFeature(f"could not load model {source.reference!r}: {error}") from None
    return pipe
