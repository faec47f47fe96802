"""ControlNet models: what a control unit's `model` means, and loading one.

A control model is a single diffusers ControlNet (ControlNetModel for SD 1.x/2.x and SDXL,
FluxControlNetModel for FLUX.1, SD3ControlNetModel for SD 3.x, QwenImageControlNetModel for Qwen-Image,
ZImageControlNetModel for Z-Image), not a pipeline, so it has its own
reference rules: a hub repo id or a local folder with a config.json naming one of those classes,
a .safetensors checkpoint, or `demo` (the ControlNet bundled beside the demo model). Its config
is read (small JSON, no weights) so a ControlNet made for another base (SD 1.5 control on SDXL)
is refused before anything loads (the family's check_control: its class, then its dimensions against
the loaded base's denoiser, before the control's own weights load). The loaded module is cached by
PipelineCache.lease_component and attached to the base with from_pipe by the family.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easel.errors import InvalidRequest, ModelNotFound
from easel.model_names import DEMO_CONTROL, control_display_name  # noqa: F401 (control_display_name: its old home)
from easel.models.reference import HUB_ID, PICKLE_SUFFIXES, SAFE_SUFFIXES, ModelSource, check_hub_id

DEMO = DEMO_CONTROL
CONTROL_CLASSES = (
    "ControlNetModel",
    "FluxControlNetModel",
    "SD3ControlNetModel",
    "QwenImageControlNetModel",
    "ZImageControlNetModel",
)
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


@dataclass(frozen=True)
class ControlSource:
    """A resolved control model: where it is, and its config when one can be read cheaply
    (None for single .safetensors files: their config is only known once loaded)."""

    source: ModelSource
    config: dict[str, Any] | None


def resolve_control(reference: str, *, field: str, allow_pickle: bool) -> ControlSource:
    """Resolve a control unit's `model`; `field` ("controls[0].model") names it in errors."""
    if reference == DEMO:
        from easel.demo import demo_controlnet_path

        folder = demo_controlnet_path()
        return ControlSource(ModelSource("folder", DEMO, str(folder)), _read_config(folder / "config.json"))
    path = Path(reference).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelNotFound(
                f"{field}={reference!r} is a folder but not a ControlNet: no config.json in {path.resolve()}"
            )
        config = _checked(_read_config(config_file), reference, field)
        return ControlSource(ModelSource("folder", reference, str(path.resolve())), config)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise InvalidRequest(
                f"invalid {field}={reference!r}: {suffix} files are pickles that can run code when "
                "loaded; use a .safetensors file, or pass --allow-pickle if you trust it",
                field=field,
                value=reference,
            )
        if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            raise InvalidRequest(
                f"invalid {field}={reference!r}: a single ControlNet checkpoint must be a .safetensors file",
                field=field,
                value=reference,
            )
        return ControlSource(ModelSource("single_file", reference, str(path.resolve())), None)
    if path.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES or reference.startswith((".", "/", "~")):
        raise ModelNotFound(f"{field}: control model file or folder {reference!r} does not exist")
    if not HUB_ID.match(reference):
        raise InvalidRequest(
            f"invalid {field}={reference!r}: not a local path, not a Hugging Face repo id (org/name) "
            f"and not {DEMO!r}",
            field=field,
            value=reference,
        )
    check_hub_id(reference, field=field)
    return ControlSource(
        ModelSource("hub", reference, reference), _checked(_hub_config(reference, field), reference, field)
    )


def load_control(
    source: ModelSource, *, dtype: Any, device: str, allow_pickle: bool, class_name: str = "ControlNetModel"
) -> Any:
    """Load a ControlNet of `class_name` (its config's _class_name; for a single file, the family's
    own) onto `device`; loader errors become EaselErrors."""
    import diffusers

    from easel.errors import UnsupportedFeature
    from easel.models.cache import no_loading_bars

    if class_name not in CONTROL_CLASSES:  # _checked refused it already; a guard for direct callers
        raise UnsupportedFeature(f"control model {source.reference!r} is a {class_name}, not a ControlNet")
    model_class = getattr(diffusers, class_name)
    try:
        with no_loading_bars(), warnings.catch_warnings():
            # diffusers still passes huggingface_hub a deprecated argument for single models
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            if source.kind == "single_file":
                model = model_class.from_single_file(source.location, torch_dtype=dtype)
            else:
                model = model_class.from_pretrained(
                    source.location, dtype=dtype, use_safetensors=None if allow_pickle else True
                )
    except OSError as error:
        raise ModelNotFound(f"could not load control model {source.reference!r}: {error}") from None
    except (ValueError, KeyError, RuntimeError) as error:
        raise UnsupportedFeature(f"could not load control model {source.reference!r}: {error}") from None
    return model.to(device)


def control_weights_file(source: ModelSource) -> Path | None:
    """The file whose sha256 identifies a control model (None if not found locally)."""
    if source.kind == "single_file":
        return Path(source.location)
    if source.kind == "folder":
        folder = Path(source.location)
        return next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHTS:
        found = try_to_load_from_cache(source.location, name)
        if isinstance(found, str):
            return Path(found)
    return None


def _read_config(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))


def _checked(config: dict[str, Any], reference: str, field: str) -> dict[str, Any]:
    class_name = str(config.get("_class_name", ""))
    if class_name not in CONTROL_CLASSES:
        hint = " (that is a whole pipeline: give it as --model)" if "Pipeline" in class_name else ""
        raise InvalidRequest(
            f"invalid {field}={reference!r}: it is a {class_name or 'unknown'} model, not a "
            f"ControlNet ({', '.join(CONTROL_CLASSES)}){hint}",
            field=field,
            value=reference,
        )
    return config


def _hub_config(repo_id: str, field: str) -> dict[str, Any]:
    """config.json from the HF cache or hub (never the weights)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return _read_config(Path(hf_hub_download(repo_id, "config.json")))
    except LocalEntryNotFoundError:
        if _cached(repo_id, "model_index.json"):
            raise InvalidRequest(
                f"invalid {field}={repo_id!r}: it is a whole diffusers pipeline, not a ControlNetModel "
                "(give it as --model)",
                field=field,
                value=repo_id,
            ) from None
        where = (
            "offline mode is on (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "the hub could not be reached"
        )
        raise ModelNotFound(
            f"{field}: control model {repo_id!r} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {where}"
        ) from None
    except EntryNotFoundError:
        raise InvalidRequest(
            f"invalid {field}={repo_id!r}: the repository has no config.json at its root, so it is "
            "not a diffusers ControlNet",
            field=field,
            value=repo_id,
        ) from None
    except HfHubHTTPError as error:
        raise ModelNotFound(f"{field}: control model {repo_id!r} could not be fetched: {error}") from None


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)
