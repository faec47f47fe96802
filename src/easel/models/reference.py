"""Turn what the user typed after --model into a ModelSource, or say where we looked.

Three kinds of reference, as users have them: a Hugging Face repo id (resolved through the
normal HF cache, so HF_HOME and HF_HUB_OFFLINE apply), a local diffusers folder
(model_index.json inside), or a single checkpoint file. Pickle checkpoints can execute
code when loaded, so they are refused unless the settings allow them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from easel.errors import InvalidRequest, ModelNotFound
from easel.model_names import PICKLE_SUFFIXES, SAFE_SUFFIXES

BUNDLED = "bundled demo model"
DEMO_INPAINT = "easel-demo-inpaint"  # the bundled inpainting model, by name (no path needed)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GGUF_SUFFIX = ".gguf"  # a quantised transformer alone (city96's FLUX.1 / SD 3.5): easel.models.quantize
# a transformer alone, as a file: a .gguf, or a FLUX.1 / SD 3.5 transformer .safetensors (BFL's, ComfyUI's
# diffusion_models), which easel.models.quantize.with_transformer_base recognises; the rest of the pipeline
# comes from its base model
TRANSFORMER_FILE = "transformer"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: where its files are and how to load them."""

    kind: Literal["hub", "folder", "single_file", "transformer"]
    reference: str  # what the user gave (repo id or path), for messages and metadata
    location: str  # repo id for hub, absolute path otherwise
    # transformer: the diffusers model (hub or folder) the rest of the pipeline and the configs come from
    base: ModelSource | None = None

    @property
    def is_gguf(self) -> bool:
        """A GGUF transformer file (its weights stay quantised as they load)."""
        return self.kind == TRANSFORMER_FILE and self.location.lower().endswith(GGUF_SUFFIX)

    @property
    def display_name(self) -> str:
        """The short name image metadata shows as "Model"."""
        if self.reference == BUNDLED:
            return "easel-demo"
        if self.reference == DEMO_INPAINT:
            return DEMO_INPAINT
        if self.kind == "hub":
            return self.location.rsplit("/", 1)[-1]
        files = ("single_file", TRANSFORMER_FILE)
        return Path(self.location).stem if self.kind in files else Path(self.location).name

    def read_model_index(self) -> dict[str, Any] | None:
        """model_index.json as a dict (None for single files, which have none; a transformer
        file's is its base model's)."""
        if self.kind == TRANSFORMER_FILE:
            return None if self.base is None else self.base.read_model_index()
        if self.kind == "single_file":
            return None
        if self.kind == "folder":
            return json.loads((Path(self.location) / "model_index.json").read_text("utf-8"))
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(self.location, "model_index.json")).read_text("utf-8"))


def resolve_reference(reference: str, *, default_folder: Path, allow_pickle: bool) -> ModelSource:
    """Resolve a --model value; `reference` empty means the bundled default folder."""
    if not reference:
        return _folder_source(default_folder, BUNDLED)
    if reference == DEMO_INPAINT:
        from easel.demo import demo_inpaint_model_path

        return _folder_source(demo_inpaint_model_path(), DEMO_INPAINT)
    path = Path(reference).expanduser()
    if path.is_dir():
        return _folder_source(path, reference)
    if path.is_file():
        return _file_source(path, reference, allow_pickle)
    if path.suffix.lower() in (*SAFE_SUFFIXES, *PICKLE_SUFFIXES, GGUF_SUFFIX) or _looks_like_path(reference):
        raise ModelNotFound(f"model file or folder {reference!r} does not exist (looked at {path.resolve()})")
    if not HUB_ID.match(reference):
        raise InvalidRequest(
            f"invalid model={reference!r}: not a local path and not a Hugging Face repo id (org/name)",
            field="model",
            value=reference,
        )
    check_hub_id(reference, field="model")
    return _hub_source(reference)


def check_hub_id(repo_id: str, *, field: str, value: object = None) -> None:
    """huggingface_hub's own rules for a repo id (at most 96 characters, no `..` or `--`, no
    leading or trailing `-` or `.`), as an InvalidRequest naming `field` instead of its
    HFValidationError from deep inside a download."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).replace(f": '{repo_id}'", "").rstrip(".")
        shown = repo_id if value is None else value
        raise InvalidRequest(
            f"invalid {field}={shown!r}: not a valid Hugging Face repo id ({reason})",
            field=field,
            value=shown,
        ) from None


def _looks_like_path(reference: str) -> bool:
    return reference.startswith((".", "/", "~")) or "\\" in reference or reference.count("/") > 1


def _folder_source(path: Path, reference: str) -> ModelSource:
    if not (path / "model_index.json").is_file():
        raise ModelNotFound(
            f"{reference!r} is a folder but not a diffusers model: no model_index.json in {path.resolve()}"
        )
    return ModelSource("folder", reference, str(path.resolve()))


def _file_source(path: Path, reference: str, allow_pickle: bool) -> ModelSource:
    suffix = path.suffix.lower()
    if suffix == GGUF_SUFFIX:  # its base model is attached by the engine (request.base_model)
        return ModelSource(TRANSFORMER_FILE, reference, str(path.resolve()))
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InvalidRequest(
            f"invalid model={reference!r}: {suffix} files are pickles that can run code when loaded; "
            "use a .safetensors file, or pass --allow-pickle if you trust this file",
            field="model",
            value=reference,
        )
    if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
        raise InvalidRequest(
            f"invalid model={reference!r}: a single checkpoint must be a .safetensors file (or a .gguf "
            "transformer)",
            field="model",
            value=reference,
        )
    return ModelSource("single_file", reference, str(path.resolve()))


HUB_PROBE_TIMEOUT_S = 2.0


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub's endpoint opens within HUB_PROBE_TIMEOUT_S. Behind
    a proxy (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY) a direct connection says nothing: assume yes
    and let huggingface_hub go through the proxy."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                              "ALL_PROXY", "all_proxy")):  # fmt: skip
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _hub_source(repo_id: str) -> ModelSource:
    """Check the repo is reachable (cache or hub) without downloading weights."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    # without a network huggingface_hub retries for about 25 s before it looks in the cache:
    # ask the cache alone when the hub cannot even be connected to
    cache_only = not constants.HF_HUB_OFFLINE and not _hub_reachable()
    try:
        hf_hub_download(repo_id, "model_index.json", local_files_only=cache_only)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            why = " and offline mode is on (HF_HUB_OFFLINE=1)"
        else:
            why = f" and the hub ({constants.ENDPOINT}) cannot be reached"
        raise ModelNotFound(
            f"model {repo_id!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}){why}; check the "
            "name (as the hub spells it: org/name), or set HF_HUB_OFFLINE=1 to use only the cache"
        ) from None
    except GatedRepoError:
        raise ModelNotFound(
            f"model {repo_id!r} is gated: accept its license on the hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"model {repo_id!r} does not exist on the Hugging Face hub") from None
    except EntryNotFoundError:
        raise ModelNotFound(
            f"model {repo_id!r} has no model_index.json: it is not a diffusers pipeline repository"
        ) from None
    except HfHubHTTPError as error:
        raise ModelNotFound(f"model {repo_id!r} could not be fetched from the hub: {error}") from None
    return ModelSource("hub", repo_id, repo_id)
