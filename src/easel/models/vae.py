"""VAE overrides: what a request's `vae` means, checking it fits the model, and loading it.

A VAE override is one diffusers AutoencoderKL, not a pipeline: a hub repo id or a local
folder whose config.json names AutoencoderKL (a VAE repo such as madebyollin/sdxl-vae-fp16-fix),
a repo or folder with a `vae` subfolder (the VAE of another pipeline), or a single .safetensors
file (what A1111 users download; pickles only with allow_pickle). Its config (small JSON, or
a single file's tensor shapes) is read first, so a VAE of another latent space is refused
before anything loads. The loaded module is cached by PipelineCache.lease_component (kind
"vae") and swapped into the task pipeline with from_pipe, so the cached base pipeline and
its own VAE are never touched.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easel.errors import InvalidRequest, ModelNotFound, UnsupportedFeature
from easel.model_names import vae_display_name  # noqa: F401 (its old home)
from easel.models.reference import HUB_ID, PICKLE_SUFFIXES, SAFE_SUFFIXES, ModelSource, check_hub_id

FIELD = "vae"
VAE_CLASSES = ("AutoencoderKL",)
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
BIN_WEIGHTS = ("diffusion_pytorch_model.bin",)
# the decoder's first convolution takes the latents: its input channels are the latent channels
# (the same key in A1111/LDM and diffusers layouts; full checkpoints prefix it)
LATENT_KEYS = (
    "decoder.conv_in.weight",
    "first_stage_model.decoder.conv_in.weight",
    "vae.decoder.conv_in.weight",
)


@dataclass(frozen=True)
class VaeSource:
    """A resolved VAE: where it is, the subfolder holding it (None: the root) and what is
    known of its config before loading (a single file: only latent_channels, from its shapes)."""

    source: ModelSource
    subfolder: str | None
    config: dict[str, Any]


def resolve_vae(reference: str, *, allow_pickle: bool) -> VaeSource:
    """Resolve a request's `vae`; errors name the field `vae`."""
    path = Path(reference).expanduser()
    if path.is_dir():
        for subfolder in (None, "vae"):
            config_file = path / (subfolder or "") / "config.json"
            if config_file.is_file():
                config = _checked(_read_config(config_file), reference)
                return VaeSource(ModelSource("folder", reference, str(path.resolve())), subfolder, config)
        raise _named(
            ModelNotFound(
                f"vae={reference!r} is a folder but not a VAE: no config.json (nor vae/config.json) in "
                f"{path.resolve()}"
            )
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise InvalidRequest(
                f"invalid vae={reference!r}: {suffix} files are pickles that can run code when loaded; "
                "use a .safetensors file, or pass --allow-pickle if you trust it",
                field=FIELD,
                value=reference,
            )
        if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            raise InvalidRequest(
                f"invalid vae={reference!r}: a single VAE file must be a .safetensors file",
                field=FIELD,
                value=reference,
            )
        config = _file_config(path, reference) if suffix in SAFE_SUFFIXES else {}
        return VaeSource(ModelSource("single_file", reference, str(path.resolve())), None, config)
    if path.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES or reference.startswith((".", "/", "~")):
        raise _named(ModelNotFound(f"vae: VAE file or folder {reference!r} does not exist"))
    if not HUB_ID.match(reference):
        raise InvalidRequest(
            f"invalid vae={reference!r}: not a local path and not a Hugging Face repo id (org/name)",
            field=FIELD,
            value=reference,
        )
    check_hub_id(reference, field=FIELD)
    subfolder, config = _hub_config(reference)
    return VaeSource(ModelSource("hub", reference, reference), subfolder, _checked(config, reference))


def base_vae_config(source: ModelSource) -> dict[str, Any] | None:
    """The config of the base model's own VAE, read from its files (None: not known before
    loading, e.g. a single checkpoint file). A model whose pipeline has no AutoencoderKL `vae`
    (Kandinsky 2.2 decodes with a MoVQ, a VQModel) is refused: there is nothing to replace."""
    index = source.read_model_index()
    if index is None:
        return None
    declared = index.get("vae")
    if not declared or declared[-1] not in VAE_CLASSES:
        decoders = [f"{name} ({value[-1]})" for name, value in index.items()
                    if isinstance(value, list) and value and value[-1] == "VQModel"]  # fmt: skip
        what = f"it decodes with {', '.join(decoders)}, a MoVQ, " if decoders else "it has "
        raise _named(
            UnsupportedFeature(
                f"vae: {source.reference or 'this model'} takes no VAE override: {what}not an "
                "AutoencoderKL VAE; leave vae unset"
            )
        )
    try:
        if source.kind == "folder":
            return _read_config(Path(source.location) / "vae" / "config.json")
        from huggingface_hub import hf_hub_download

        return _read_config(Path(hf_hub_download(source.location, "vae/config.json")))
    except Exception:  # unreadable here: checked against the loaded VAE instead
        return None


def check_fits(reference: str, config: dict[str, Any], base_config: dict[str, Any] | None) -> None:
    """Refuse a VAE whose latent space is not the model's: other latent channels, or another
    down-sampling factor (the UNet would see latents of another shape or meaning)."""
    if base_config is None:
        return
    different = []
    theirs, ours = config.get("latent_channels"), base_config.get("latent_channels", 4)
    if theirs is not None and theirs != ours:
        different.append(f"latent_channels {theirs} vs the model's {ours}")
    blocks, base_blocks = config.get("block_out_channels"), base_config.get("block_out_channels")
    if blocks is not None and base_blocks is not None and len(blocks) != len(base_blocks):
        factor, base_factor = 2 ** (len(blocks) - 1), 2 ** (len(base_blocks) - 1)
        different.append(f"down-sampling x{factor} vs the model's x{base_factor}")
    if different:
        raise InvalidRequest(
            f"invalid vae={reference!r}: this VAE does not fit the model ({'; '.join(different)}); "
            "it was made for another kind of model",
            field=FIELD,
            value=reference,
        )


def load_vae(
    vae: VaeSource, *, dtype: Any, device: str, allow_pickle: bool, base_config: dict[str, Any]
) -> Any:
    """Load the AutoencoderKL onto `device` in the pipeline's dtype; loader errors become
    EaselErrors naming `vae`. A single file has no config of its own: it takes the base VAE's
    (its architecture, scaling factor and upcast flag), as A1111 loads a VAE file into the
    model's VAE."""
    import tempfile

    from diffusers import AutoencoderKL

    from easel.models.cache import no_loading_bars

    reference = vae.source.reference
    try:
        with no_loading_bars(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            if vae.source.kind == "single_file":
                with tempfile.TemporaryDirectory(prefix="easel-vae-") as scratch:
                    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
                    config["_class_name"] = "AutoencoderKL"
                    Path(scratch, "config.json").write_text(json.dumps(config, default=list), "utf-8")
                    model = AutoencoderKL.from_single_file(vae.source.location, config=scratch, dtype=dtype)
            else:
                model = AutoencoderKL.from_pretrained(
                    vae.source.location,
                    subfolder=vae.subfolder,
                    dtype=dtype,
                    use_safetensors=None if allow_pickle else True,
                )
    except OSError as error:
        if "safetensors" in str(error).lower() and not allow_pickle:
            raise InvalidRequest(
                f"invalid vae={reference!r}: it has no .safetensors weights, only pickle files that can run "
                "code when loaded; pass --allow-pickle if you trust it",
                field=FIELD,
                value=reference,
            ) from None
        raise _named(ModelNotFound(f"vae: could not load VAE {reference!r}: {error}")) from None
    except (ValueError, KeyError, RuntimeError) as error:
        raise InvalidRequest(
            f"invalid vae={reference!r}: could not load it as the model's VAE: {_short(error)}",
            field=FIELD,
            value=reference,
        ) from None
    return model.to(device)


def vae_weights_file(vae: ModelSource, subfolder: str | None) -> Path | None:
    """The file whose sha256 identifies a VAE (None if not found locally)."""
    if vae.kind == "single_file":
        return Path(vae.location)
    names = [f"{subfolder}/{name}" if subfolder else name for name in (*WEIGHTS, *BIN_WEIGHTS)]
    if vae.kind == "folder":
        folder = Path(vae.location)
        return next((folder / name for name in names if (folder / name).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(vae.location, name)
        if isinstance(found, str):
            return Path(found)
    return None


def _named(error: Exception) -> Exception:
    """An EaselError with `field` = vae, so every door names what its caller sent."""
    error.field = FIELD  # type: ignore[attr-defined]
    return error


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + "…"


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def _checked(config: dict[str, Any], reference: str) -> dict[str, Any]:
    class_name = str(config.get("_class_name", ""))
    if class_name not in VAE_CLASSES:
        hint = " (that is a whole pipeline: give it as --model)" if "Pipeline" in class_name else ""
        if class_name == "VQModel":
            hint = " (a MoVQ/VQ-GAN decoder, as Kandinsky uses; easel swaps AutoencoderKL VAEs only)"
        raise InvalidRequest(
            f"invalid vae={reference!r}: it is a {class_name or 'unknown'} model, not an AutoencoderKL "
            f"VAE{hint}",
            field=FIELD,
            value=reference,
        )
    return config


def _file_config(path: Path, reference: str) -> dict[str, Any]:
    """What a .safetensors VAE says of itself without loading: its latent channels."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            found = next((key for key in LATENT_KEYS if key in keys), None)
            if found is None:
                raise InvalidRequest(
                    f"invalid vae={reference!r}: not a VAE checkpoint (it has no decoder.conv_in weights)",
                    field=FIELD,
                    value=reference,
                )
            shape = handle.get_slice(found).get_shape()
    except InvalidRequest:
        raise
    except Exception as error:
        raise InvalidRequest(
            f"invalid vae={reference!r}: not a readable .safetensors file ({_short(error)})",
            field=FIELD,
            value=reference,
        ) from None
    return {"latent_channels": int(shape[1])}


def _hub_config(repo_id: str) -> tuple[str | None, dict[str, Any]]:
    """(subfolder, config) of a hub VAE: config.json at the root (a VAE repo), else
    vae/config.json (a pipeline repo); from the HF cache or the hub, never the weights."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    missing = 0
    for subfolder in (None, "vae"):
        try:
            name = f"{subfolder}/config.json" if subfolder else "config.json"
            return subfolder, _read_config(Path(hf_hub_download(repo_id, name)))
        except LocalEntryNotFoundError:  # not cached (offline or unreachable); first: a subclass
            continue
        except EntryNotFoundError:
            missing += 1  # the hub answered: no such file
        except HfHubHTTPError as error:
            raise _named(ModelNotFound(f"vae: VAE {repo_id!r} could not be fetched: {error}")) from None
    if missing == 2:
        raise InvalidRequest(
            f"invalid vae={repo_id!r}: the repository has neither config.json nor vae/config.json, so it "
            "is not a diffusers VAE",
            field=FIELD,
            value=repo_id,
        )
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
        raise InvalidRequest(
            f"invalid vae={repo_id!r}: it is a diffusers pipeline without an AutoencoderKL `vae` folder",
            field=FIELD,
            value=repo_id,
        )
    where = (
        "offline mode is on (HF_HUB_OFFLINE=1)"
        if constants.HF_HUB_OFFLINE
        else "the hub could not be reached"
    )
    raise _named(
        ModelNotFound(
            f"vae: VAE {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {where}"
        )
    )
