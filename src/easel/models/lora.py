"""LoRAs: find the file a request names, load it once per base model as a PEFT adapter, and
activate the request's set (with its weights) for one run.

Why adapters and not fusing: a fused LoRA changes the cached base weights, so every later
request would have to unfuse exactly (floating point makes that lossy) or reload the base.
diffusers' PEFT adapters leave the base weights untouched; `set_adapters` picks which are on
and how strongly, and `disable_lora` turns them all off, which gives bit-identical images to a
model that never had one (tested). Each adapter is named by the file's sha256, so the same file
under two names loads once and an edited file loads as a new adapter. A loaded base keeps at
most MAX_ADAPTERS adapters; the least recently used ones not needed now are deleted.

Formats: what diffusers' `load_lora_weights` reads (diffusers/PEFT names, Kohya/A1111
`lora_unet_`/`lora_te_` names, the LyCORIS LoCon files it converts). Others are refused
naming the file and diffusers' reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easel.errors import InvalidRequest, ModelNotFound, UnsupportedFeature
from easel.models.hashing import sha256_of
from easel.models.reference import PICKLE_SUFFIXES, SAFE_SUFFIXES, check_hub_id

MAX_ADAPTERS = 8
ADAPTERS_KEY = "lora_adapters"  # in LoadedModel.state: adapter name -> LoraFile, LRU order
ACTIVE_KEY = "active_loras"  # in LoadedModel.state: ((adapter, weight), ...) of the current run
HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/([\w./-]+\.(?:safetensors|ckpt|pt|bin))$")
# the cross-attention width a LoRA's UNet layers were made for -> the family that has it
CROSS_ATTENTION_FAMILIES = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as found: the name the request used, where it is, its sha256."""

    name: str
    path: Path
    sha256: str

    @property
    def adapter(self) -> str:
        return f"easel_{self.sha256[:16]}"

    @property
    def a1111_hash(self) -> str:
        """The short hash A1111 writes in `Lora hashes` (12 hex of the "addnet" hash)."""
        return addnet_hash(self.path)[:12]


def resolve_lora(name: str, *, folder: Path, allow_pickle: bool, field: str) -> Path:
    """The file `name` means: a name in `folder` (with or without .safetensors, subfolders
    allowed), a path to a file, or a hub file `org/repo/file.safetensors` (through the HF
    cache, so HF_HUB_OFFLINE applies). ModelNotFound says where it looked."""
    candidates = [
        base / f"{name}{suffix}"
        for base in (folder, bundled_folder())
        for suffix in ("", *SAFE_SUFFIXES, *PICKLE_SUFFIXES)
    ]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        path = Path(name).expanduser()
        if path.is_file():
            found = path
        elif (match := HUB_FILE.match(name)) and not path.exists():
            found = _hub_file(match.group(1), match.group(2), name, field)
    if found is None:
        raise _not_found(
            f"invalid {field}={name!r}: no such LoRA; looked for {name}.safetensors in {folder} "
            "(EASEL_LORA_DIR), for a file at that path and for a hub file org/repo/file.safetensors",
            field,
        )
    suffix = found.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise InvalidRequest(
            f"invalid {field}={name!r}: {found.name} is a pickle that can run code when loaded; use a "
            ".safetensors LoRA, or pass --allow-pickle if you trust this file",
            field=field,
            value=name,
        )
    if suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
        raise InvalidRequest(
            f"invalid {field}={name!r}: {found.name} is not a LoRA file (.safetensors)",
            field=field,
            value=name,
        )
    return found.resolve()


def _hub_file(repo_id: str, filename: str, name: str, field: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    check_hub_id(repo_id, field=field, value=name)
    try:
        return Path(hf_hub_download(repo_id, filename))
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError) as error:
        raise _not_found(
            f"invalid {field}={name!r}: {filename} of {repo_id} is not in the Hugging Face cache and "
            f"could not be downloaded ({type(error).__name__})",
            field,
        ) from None


def _not_found(message: str, field: str) -> ModelNotFound:
    """ModelNotFound naming the request field, so each door can name its own flag or field."""
    error = ModelNotFound(message)
    error.field = field  # type: ignore[attr-defined]
    return error


def lora_file(name: str, path: Path, cache_file: Path | None) -> LoraFile:
    return LoraFile(name, path, sha256_of(path, cache_file))


def addnet_hash(path: Path) -> str:
    """sha256 of a .safetensors file's tensor data without its JSON header (what A1111 and
    kohya's additional-networks show, so hashes survive metadata edits); other files: the
    whole file. Remembered per (path, size, modification time): every request records it."""
    stat = path.stat()
    return _addnet_hash(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _addnet_hash(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if path.suffix.lower() == ".safetensors":
            (length,) = struct.unpack("<Q", handle.read(8))
            handle.seek(8 + length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a .safetensors LoRA, from its header (no tensor is read)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {key: tuple(value["shape"]) for key, value in header.items() if key != "__metadata__"}


def lora_family(path: Path) -> str | None:
    """The family a LoRA was made for, from the width its cross-attention key/value layers
    read (768 SD 1.5, 1024 SD 2, 2048 SDXL); None when the file does not say (no such layers,
    or a pickle)."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        keys = lora_keys(path)
    except (OSError, ValueError, struct.error):
        return None
    width = cross_attention_width(keys)
    if width is None:
        return "sdxl" if any("lora_te2_" in k or "text_encoder_2." in k for k in keys) else None
    return CROSS_ATTENTION_FAMILIES.get(width, f"cross-attention {width}")


def cross_attention_width(keys: dict[str, tuple[int, ...]]) -> int | None:
    """In-features of the first down/A matrix of an attn2 to_k layer (the text width)."""
    for key, shape in keys.items():
        down = any(part in key for part in ("lora_down", "lora_A", "lora.down"))
        if "attn2" in key and "to_k" in key and down and len(shape) >= 2:
            return int(shape[1])
    return None


def bundled_folder() -> Path:
    """The LoRAs shipped with easel (the demo model's outline LoRA), found after the user's."""
    from easel.demo import demo_lora_path

    return demo_lora_path()


def _files(folder: Path) -> dict[str, Path]:
    """name (relative, without suffix) -> path of the LoRA files under `folder`, then the
    bundled ones a user file of the same name does not shadow."""
    found: dict[str, Path] = {}
    for base in (folder, bundled_folder()):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES:
                found.setdefault(path.relative_to(base).with_suffix("").as_posix(), path)
    return found


def lora_names(folder: Path) -> set[str]:
    """Names of the LoRA files a request may use (user folder and bundled), without hashing."""
    return set(_files(folder))


def list_loras(folder: Path, cache_file: Path | None = None) -> list[dict[str, Any]]:
    """Every LoRA a request may name: name, path, family, hashes (user folder, then bundled)."""
    entries = []
    for name, path in _files(folder).items():
        sha = sha256_of(path, cache_file)
        entries.append(
            {
                "name": name,
                "path": str(path),
                "family": lora_family(path),
                "sha256": sha,
                "hash": addnet_hash(path)[:12],
                "pickle": path.suffix.lower() in PICKLE_SUFFIXES,
            }
        )
    return entries


def check_fits(file: LoraFile, unet_config: dict[str, Any], family: str, field: str) -> None:
    """Refuse a LoRA made for another family before it is loaded (diffusers' own error is a
    tensor size mismatch deep inside PEFT)."""
    if file.path.suffix.lower() != ".safetensors":
        return
    width = cross_attention_width(lora_keys(file.path))
    expected = unet_config.get("cross_attention_dim")
    if isinstance(expected, (list, tuple)):
        expected = expected[0]
    if width is not None and expected is not None and width != expected:
        made_for = CROSS_ATTENTION_FAMILIES.get(width, f"cross-attention {width}")
        raise InvalidRequest(
            f"invalid {field}={file.name!r}: this LoRA was made for {made_for} models (text width {width}); "
            f"this {family} model's UNet reads {expected}",
            field=field,
            value=file.name,
        )


def activate(pipe: Any, state: dict[str, Any], loras: list[tuple[LoraFile, float]], family: str) -> None:
    """Make exactly `loras` (with their weights) active on `pipe` (the cached base, whose
    modules every derived pipeline shares); load the ones not yet loaded. No LoRA: all
    adapters off. Failures leave no half-loaded adapter behind."""
    adapters: OrderedDict[str, LoraFile] = state.setdefault(ADAPTERS_KEY, OrderedDict())
    needed = {file.adapter for file, _ in loras}
    for index, (file, _) in enumerate(loras):
        if file.adapter in adapters:
            adapters.move_to_end(file.adapter)
            continue
        _evict(pipe, adapters, keep=needed, room=1)
        _load(pipe, file, family, field=f"loras[{index}].name")
        adapters[file.adapter] = file
    _evict(pipe, adapters, keep=needed)
    if loras:
        pipe.enable_lora()
        # PEFT adds the adapters' outputs in this order: a canonical one (by file hash) makes
        # the image depend on the set of LoRAs, not on the order a request lists them in
        ordered = sorted(loras, key=lambda pair: pair[0].adapter)
        names, weights = [file.adapter for file, _ in ordered], [weight for _, weight in ordered]
        pipe.set_adapters(names, adapter_weights=weights)
    elif adapters:
        pipe.disable_lora()
    state[ACTIVE_KEY] = tuple((file.adapter, weight) for file, weight in loras)


def _load(pipe: Any, file: LoraFile, family: str, field: str) -> None:
    try:
        with _quiet_loading():
            pipe.load_lora_weights(
                str(file.path.parent), weight_name=file.path.name, adapter_name=file.adapter
            )
    except ImportError as error:
        raise UnsupportedFeature(f"LoRAs need the peft package ({error}); pip install peft") from None
    except Exception as error:  # diffusers/PEFT: unknown key layouts, size mismatches, bad files
        _forget(pipe, file.adapter)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidRequest(
            f"invalid {field}={file.name!r}: {file.path.name} cannot be loaded as a LoRA for this {family} "
            f"model: {reason[:300]}",
            field=field,
            value=file.name,
        ) from None
    # diffusers skips keys no module of this pipeline has (an SD LoRA on FLUX loads nothing): refuse
    if not any(file.adapter in names for names in pipe.get_list_adapters().values()):
        _forget(pipe, file.adapter)
        made_for = lora_family(file.path)
        raise InvalidRequest(
            f"invalid {field}={file.name!r}: none of {file.path.name}'s layers are in this {family} model"
            + (f" (it was made for {made_for} models)" if made_for else "")
            + "; use a LoRA made for it",
            field=field,
            value=file.name,
        )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """diffusers, transformers and PEFT narrate an adapter load ("No LoRA keys associated to
    CLIPTextModel" for a UNet-only LoRA, a table of the adapter's new parameters, "multiple
    adapters" warnings): none of it is for the user, whose errors easel raises itself."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def _evict(pipe: Any, adapters: OrderedDict[str, LoraFile], keep: set[str], room: int = 0) -> None:
    """Delete least recently used adapters not in `keep` until `room` more fit the bound."""
    for adapter in list(adapters):
        if len(adapters) + room <= MAX_ADAPTERS:
            return
        if adapter not in keep:
            _forget(pipe, adapter)
            del adapters[adapter]


def _forget(pipe: Any, adapter: str) -> None:
    """Delete `adapter` from every module that has it (a failed load may have added it to some)."""
    with contextlib.suppress(Exception):  # not loaded anywhere: nothing to delete
        pipe.delete_adapters(adapter)
