"""Quantised loading (issue 20): `quantize` through diffusers' quantization backends, and GGUF
transformer files.

Why: FLUX.1 (12 B parameters), SD 3.5 Large (8 B) and Qwen-Image (20 B) do not fit most GPUs in
bfloat16. Two ways in, both diffusers' own:

- `quantize` (a request field, the settings' default EASEL_QUANTIZE / --quantize): the model's
  denoiser (transformer / unet / prior) and its big text encoders (T5, Qwen, ...: every text
  encoder that is not a CLIP, which are small) are quantised as from_pretrained loads them, through
  a PipelineQuantizationConfig with one config per component (diffusers' for diffusers modules,
  transformers' for transformers ones: the two libraries' config signatures differ, so the
  backend-name form of PipelineQuantizationConfig refuses them).

      none           no quantisation
      int8           bitsandbytes LLM.int8() weights       CUDA GPU   pip install bitsandbytes
      nf4            bitsandbytes 4-bit NormalFloat        CUDA GPU   pip install bitsandbytes
      torchao-int8   torchao int8 weight-only              CPU, CUDA  pip install torchao
      torchao-fp8    torchao float8 (e4m3) weight-only     CUDA, compute capability >= 8.9 (Ada,
                                                           Hopper)     pip install torchao

- a .gguf file as the model (city96's FLUX.1 / SD 3.5 files: the transformer alone, quantised
  Q2..Q8 or F16/F32): the transformer loads with from_single_file(GGUFQuantizationConfig(
  compute_dtype=the run's dtype), config=<base>, subfolder="transformer") and the rest of the
  pipeline (text encoders, VAE, scheduler, tokenizers) from the base model, `base_model` in the
  request, else inferred from the file's tensor names (diffusers' infer_diffusers_model_type and its
  default repositories: FLUX.1-dev, FLUX.1-schnell, SD 3.5 Large / Medium).
- a FLUX.1 / SD 3.5 transformer alone as a .safetensors file (BFL's flux1-dev.safetensors, ComfyUI's
  diffusion_models, fp8 ones upcast): the same path as a GGUF file, without quantisation (ModelSource
  kind "transformer" for both; as_transformer_file tells it from a whole checkpoint by its tensors).

What a device or a model cannot do is refused before anything loads, naming `quantize` (or
`model` / `base_model`) and the value.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest, UnsupportedFeature
from easel.models.reference import ModelSource

if TYPE_CHECKING:
    from easel.request import GenerationRequest

DENOISERS = ("transformer", "transformer_2", "unet", "prior")
SMALL_TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")  # left as they are: ~0.1-0.7 B
FP8_CAPABILITY = (8, 9)  # float8 matmuls: Ada Lovelace and newer


@dataclass(frozen=True)
class Quantization:
    """One `quantize` value: its backend package and where it runs."""

    name: str
    package: str  # the module to import (and the pip package)
    what: str  # for messages and the README
    cuda_only: bool
    min_capability: tuple[int, int] | None = None


QUANTIZATIONS = {
    q.name: q
    for q in (
        Quantization("int8", "bitsandbytes", "bitsandbytes LLM.int8() 8-bit weights", cuda_only=True),
        Quantization("nf4", "bitsandbytes", "bitsandbytes 4-bit NF4 weights", cuda_only=True),
        Quantization("torchao-int8", "torchao", "torchao int8 weight-only", cuda_only=False),
        Quantization(
            "torchao-fp8",
            "torchao",
            "torchao float8 weight-only",
            cuda_only=True,
            min_capability=FP8_CAPABILITY,
        ),
    )
}


def refusal(field: str, message: str) -> UnsupportedFeature:
    """An UnsupportedFeature naming the field (the doors report it: CLI 2, HTTP 422)."""
    error = UnsupportedFeature(message)
    error.field = field  # type: ignore[attr-defined]
    return error


def package_available(package: str) -> bool:
    """Whether `package` can be imported (tests monkeypatch this to simulate a missing one)."""
    return importlib.util.find_spec(package) is not None


def check_quantize(value: str, device: str, source: ModelSource) -> None:
    """Refuse, before loading, a quantisation this installation, device or model cannot do."""
    if value == "none":
        return
    quantization = QUANTIZATIONS.get(value)
    if quantization is None:
        from easel.config import QUANTIZE

        raise InvalidRequest(
            f"invalid quantize={value!r}: use one of {', '.join(QUANTIZE)}", field="quantize", value=value
        )
    said = f"quantize={value!r} ({quantization.what})"
    if quantization.cuda_only and not device.startswith("cuda"):
        need = "a CUDA GPU"
        if quantization.min_capability:
            need += " with compute capability >= {}.{}".format(*quantization.min_capability)
        raise refusal("quantize", f"{said} needs {need}, and this run uses device={device!r}")
    if not quantization.cuda_only and device not in ("cpu",) and not device.startswith("cuda"):
        raise refusal("quantize", f"{said} runs on the CPU and CUDA here, not on device={device!r}")
    if quantization.min_capability and device.startswith("cuda"):
        import torch

        capability = torch.cuda.get_device_capability(device)
        if tuple(capability) < quantization.min_capability:
            least = ".".join(map(str, quantization.min_capability))
            raise refusal(
                "quantize",
                f"{said} needs a GPU with compute capability >= {least} (Ada, Hopper or newer), and "
                f"{device} has {capability[0]}.{capability[1]}; use torchao-int8 or nf4",
            )
    # the device first: on a CPU, installing bitsandbytes would not help
    if not package_available(quantization.package):
        raise refusal(
            "quantize",
            f"{said} needs the {quantization.package} package, which is not installed: "
            f"pip install {quantization.package} (or pip install 'easel[quantize]')",
        )
    if source.kind == "single_file":
        raise refusal(
            "quantize",
            f"{said}: quantisation applies as a diffusers repo or folder loads (from_pretrained); "
            f"model={source.reference!r} is a single checkpoint file: convert it to a diffusers folder, "
            "or use a GGUF file or a FLUX.1 / SD 3.5 transformer file",
        )
    if source.kind == "transformer" and not source.is_gguf:
        # diffusers' from_single_file builds its quantizer as for pre-quantised weights (pre_quantized
        # defaults to True there): torchao's then sets the float weights as they are, and bitsandbytes'
        # looks for quantisation statistics the file does not have; measured with diffusers 0.42
        raise refusal(
            "quantize",
            f"{said}: model={source.reference!r} is a .safetensors transformer file, which diffusers does "
            "not quantise as it loads from a single file; use a GGUF file of it (city96's Q8_0 .. Q4), or "
            "the diffusers repo with quantize, or leave quantize out",
        )
    index = source.read_model_index() or {}
    if not quantized_components(index, shared=()):
        raise refusal(
            "quantize",
            f"{said}: model {source.reference!r} has no denoiser or large text encoder to quantise",
        )


def quantized_components(index: Mapping[str, Any], *, shared: Iterable[str]) -> list[str]:
    """The components of model_index.json `index` to quantise: the denoisers and the text encoders
    that are not CLIPs, less the `shared` ones (modules loaded already: a GGUF transformer, or
    those a companion takes from its base)."""
    skip = set(shared)
    names = []
    for name, entry in index.items():
        if name.startswith("_") or name in skip or not isinstance(entry, list) or entry[0] is None:
            continue
        if name in DENOISERS or (name.startswith("text_encoder") and entry[-1] not in SMALL_TEXT_ENCODERS):
            names.append(name)
    return names


def pipeline_quantization(value: str, index: Mapping[str, Any], dtype: Any, *, shared: Iterable[str]) -> Any:
    """diffusers' PipelineQuantizationConfig for `value` (None for none): one config per component
    (diffusers' for its modules, transformers' for the text encoders)."""
    if value == "none":
        return None
    from diffusers import PipelineQuantizationConfig

    mapping = {
        name: _backend_config(value, index[name][0] == "transformers", dtype)
        for name in quantized_components(index, shared=shared)
    }
    return PipelineQuantizationConfig(quant_mapping=mapping) if mapping else None


def _backend_config(value: str, for_transformers: bool, dtype: Any) -> Any:
    if value in ("int8", "nf4"):
        if for_transformers:
            from transformers import BitsAndBytesConfig
        else:
            from diffusers import BitsAndBytesConfig
        if value == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    quant_type = Int8WeightOnlyConfig() if value == "torchao-int8" else Float8WeightOnlyConfig()
    if for_transformers:
        from transformers import TorchAoConfig
    else:
        from diffusers import TorchAoConfig
    return TorchAoConfig(quant_type)


# -- transformer files: GGUF, and FLUX.1 / SD 3.5 transformer .safetensors ------------------------

# diffusers' inferred model types (infer_diffusers_model_type) of the transformer files easel loads on
# a base model, and the family each is: FLUX.1 Fill / Depth and FLUX.2 have no family here
TRANSFORMER_FILE_TYPES = {
    "flux-dev": "FLUX.1 [dev]",
    "flux-schnell": "FLUX.1 [schnell]",
    "sd3": "SD 3 Medium",
    "sd35_medium": "SD 3.5 Medium",
    "sd35_large": "SD 3.5 Large",
}
# key prefixes of the modules an all-in-one checkpoint carries beside its transformer (ComfyUI's and
# SAI's: the VAE, CLIP / T5 text encoders)
PIPELINE_PREFIXES = ("first_stage_model.", "vae.", "text_encoders.", "cond_stage_model.", "conditioner.")
# diffusers' own names for a FLUX.1 / SD 3 transformer (a saved FluxTransformer2DModel state dict):
# no model type can be inferred from them, so base_model must be given
DIFFUSERS_TRANSFORMER_KEYS = ("context_embedder.weight", "transformer_blocks.0.attn.to_q.weight")
WHAT_LOADS = (
    "a FLUX.1 or SD 3.5 transformer file (BFL's flux1-dev.safetensors, ComfyUI's "
    "diffusion_models/*.safetensors or a .gguf) with base_model (--base) naming the diffusers model the "
    "rest comes from, SD 1.5 / 2.x / SDXL checkpoints, or a diffusers repo id or folder"
)


def tensor_shapes(path: str) -> dict[str, Any]:
    """Tensor name -> an object with the tensor's (torch-order) shape, read from the file's header
    (GGUF or safetensors) without loading any weights: what infer_diffusers_model_type looks at."""
    from types import SimpleNamespace

    import torch

    if path.lower().endswith(".gguf"):
        from gguf import GGUFReader

        reader = GGUFReader(path)
        return {
            tensor.name: SimpleNamespace(shape=torch.Size(reversed([int(n) for n in tensor.shape])))
            for tensor in reader.tensors
        }
    from safetensors import safe_open

    with safe_open(path, framework="pt") as file:
        names = list(file.keys())
        return {name: SimpleNamespace(shape=torch.Size(file.get_slice(name).get_shape())) for name in names}


def inferred_model_type(shapes: Mapping[str, Any]) -> str | None:
    """diffusers' model type for a checkpoint's tensor names and shapes (None: names no diffusers rule
    knows, such as diffusers' own)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        return infer_diffusers_model_type(shapes)
    except Exception:
        return None


def infer_transformer_base(path: str) -> str | None:
    """The diffusers repository a transformer file belongs to, from its tensor names (BFL's, as city96
    and ComfyUI write them): diffusers' model type and its default repository; None: not known."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    model_type = inferred_model_type(tensor_shapes(path))
    if model_type not in TRANSFORMER_FILE_TYPES:
        return None
    return DIFFUSERS_DEFAULT_PIPELINE_PATHS.get(model_type, {}).get("pretrained_model_name_or_path")


def as_transformer_file(source: ModelSource) -> ModelSource:
    """`source` as a transformer file when it is a .safetensors holding a FLUX.1 / SD 3.5 transformer
    alone (BFL's names, with or without ComfyUI's model.diffusion_model. prefix, or diffusers' own);
    any other source as it is. A FLUX / SD 3 checkpoint that carries its VAE or text encoders too, or a
    kind of FLUX easel has no family for, is refused naming model."""
    if source.kind != "single_file" or not source.location.lower().endswith(".safetensors"):
        return source
    try:
        shapes = tensor_shapes(source.location)
    except Exception:  # not a readable safetensors file: detect_family says so, naming model
        return source
    model_type = inferred_model_type(shapes)
    if model_type is not None and ("flux" in model_type or "sd3" in model_type):
        if model_type not in TRANSFORMER_FILE_TYPES:
            raise refusal(
                "model",
                f"model={source.reference!r} is a {model_type!r} checkpoint, which easel has no family for; "
                f"what loads: {', '.join(TRANSFORMER_FILE_TYPES.values())} transformers: {WHAT_LOADS}",
            )
        if any(name.startswith(PIPELINE_PREFIXES) for name in shapes):
            raise refusal(
                "model",
                f"model={source.reference!r} is an all-in-one {TRANSFORMER_FILE_TYPES[model_type]} "
                "checkpoint (its VAE or text encoders inside), which easel does not load as one file; use "
                f"its transformer alone: {WHAT_LOADS}",
            )
        return replace(source, kind="transformer")
    if all(name in shapes for name in DIFFUSERS_TRANSFORMER_KEYS):
        return replace(source, kind="transformer")
    return source


def with_transformer_base(
    source: ModelSource, base_model: str | None, resolve: Callable[[str], ModelSource]
) -> ModelSource:
    """`source` (a transformer file: GGUF, or a FLUX.1 / SD 3.5 .safetensors) with its base model
    resolved: `base_model`, else the one its tensor names say. A base given for anything else is
    refused (it would be ignored)."""
    if source.kind == "transformer" and source.is_gguf and not package_available("gguf"):
        raise refusal(
            "model",
            f"model={source.reference!r} is a GGUF file, which needs the gguf package: pip install gguf "
            "(or pip install 'easel[quantize]')",
        )
    source = as_transformer_file(source)
    if source.kind != "transformer":
        if base_model is not None:
            raise InvalidRequest(
                f"invalid base_model={base_model!r}: it names where a transformer file's pipeline comes "
                f"from, and model={source.reference!r} is not a .gguf file or a FLUX.1 / SD 3.5 transformer "
                ".safetensors; leave base_model out",
                field="base_model",
                value=base_model,
            )
        return source
    reference = base_model or infer_transformer_base(source.location)
    if reference is None:
        raise InvalidRequest(
            f"invalid model={source.reference!r}: cannot tell from its tensors which model this transformer "
            "file belongs to; name the diffusers model it comes from with base_model (--base), "
            "e.g. black-forest-labs/FLUX.1-dev",
            field="base_model",
        )
    base = resolve(reference)
    if base.kind not in ("hub", "folder"):
        raise InvalidRequest(
            f"invalid base_model={reference!r}: a transformer file takes the rest of its pipeline from a "
            "diffusers repo id or folder",
            field="base_model",
            value=reference,
        )
    return replace(source, base=base)


def load_transformer_file(source: ModelSource, dtype: Any) -> tuple[str, Any]:
    """(component name, module): the file's transformer, configured from the base. A GGUF file's
    weights stay as they are (GGUFParameter, dequantised layer by layer as it runs in `dtype`); a
    .safetensors file's load in `dtype` (an fp8-stored file is upcast by diffusers)."""
    import diffusers
    from diffusers import GGUFQuantizationConfig

    assert source.base is not None  # with_transformer_base attached it
    index = source.base.read_model_index() or {}
    entry = index.get("transformer")
    if not isinstance(entry, list) or entry[0] != "diffusers":
        raise refusal(
            "model",
            f"model={source.reference!r}: a transformer file replaces a transformer, and base model "
            f"{source.base.reference!r} has none ({index.get('_class_name')})",
        )
    quantization = GGUFQuantizationConfig(compute_dtype=dtype) if source.is_gguf else None
    model_class = getattr(diffusers, entry[1])
    try:
        module = model_class.from_single_file(
            source.location,
            quantization_config=quantization,
            config=source.base.location,
            subfolder="transformer",
            torch_dtype=dtype,
        )
    except (IndexError, KeyError, ValueError, RuntimeError) as error:  # diffusers' converters index blindly
        raise refusal(
            "model",
            f"model={source.reference!r}: its tensors do not load as base model {source.base.reference!r}'s "
            f"{entry[1]} ({type(error).__name__}: {error}); is base_model the model it was made from?",
        ) from None
    return "transformer", module


def resolve_load_options(
    request: GenerationRequest, source: ModelSource, default: str, resolve: Callable[[str], ModelSource]
) -> tuple[ModelSource, GenerationRequest]:
    """The source with a transformer file's base model attached, and the request recording how the
    model loads, so a replay loads it the same way: `quantize` as used (the request's, else the
    settings' `default`; None when not quantised) and a transformer file's `base_model` (also when
    inferred)."""
    source = with_transformer_base(source, request.base_model, resolve)
    quantize = request.quantize or default
    recorded = {
        "quantize": None if quantize == "none" else quantize,
        "base_model": None if source.base is None else source.base.reference,
    }
    if recorded != {"quantize": request.quantize, "base_model": request.base_model}:
        request = request.model_copy(update=recorded)
    return source, request


@contextmanager
def dtype_casts_skipped(pipe: Any) -> Iterator[None]:
    """While a task pipeline is derived from `pipe` (from_pipe), its quantised modules ignore
    dtype-only .to() calls. Why: from_pipe always ends with .to(dtype) (the base's own dtype,
    a no-op for plain modules), and diffusers refuses any dtype cast of a quantised model
    ("Casting a quantized model to a new dtype is unsupported"), torchao's and GGUF's alike;
    bitsandbytes modules the pipeline skips itself. Device moves still go through."""
    import torch

    modules = [
        module
        for module in getattr(pipe, "components", {}).values()
        if isinstance(module, torch.nn.Module)
        and (getattr(module, "is_quantized", False) or getattr(module, "hf_quantizer", None) is not None)
    ]

    def keeping(module: Any) -> Callable[..., Any]:
        move = module.to

        def to(*args: Any, **kwargs: Any) -> Any:
            device = kwargs.get("device", args[0] if args else None)
            if device is None or isinstance(device, torch.dtype):
                return module  # a dtype-only cast: the quantised weights stay as they are
            return move(device)

        return to

    for module in modules:
        module.to = keeping(module)
    try:
        yield
    finally:
        for module in modules:
            del module.to
