"""Model hashes for image metadata: "Model hash" is the first 10 hex of the weights' sha256.

For a single checkpoint file that is the file's hash (what AUTOMATIC1111 shows). A diffusers
folder has no single file, so its identity is the UNet weights file: the component that makes
one model differ from another of the same family. Hashing gigabytes takes seconds, so hashes
are remembered in EASEL_HOME/hashes.json, keyed by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from easel.models.reference import ModelSource
from easel.storage.files import write_atomically

UNET_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "decoder/unet/diffusion_pytorch_model.safetensors",
    "prior/diffusion_pytorch_model.safetensors",  # a Kandinsky prior: its PriorTransformer
    "unet/diffusion_pytorch_model.bin",
)


def weights_file(source: ModelSource) -> Path | None:
    """The file whose hash identifies `source` (None if it cannot be found locally)."""
    if source.kind in ("single_file", "transformer"):  # a transformer file: its own, as Forge hashes it
        return Path(source.location)
    if source.kind == "folder":
        folder = Path(source.location)
        return next((folder / name for name in UNET_WEIGHTS if (folder / name).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in UNET_WEIGHTS:
        found = try_to_load_from_cache(source.location, name)
        if isinstance(found, str):
            return Path(found)
    return None


def sha256_of(path: Path, cache_file: Path | None = None) -> str:
    """sha256 of a file, remembered in `cache_file` across runs."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text("utf-8"))
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if cache_file is not None:
        cache[key] = value
        write_atomically(cache_file, json.dumps(cache, indent=0).encode())
    return value


def short_hash(sha256: str | None) -> str | None:
    return None if sha256 is None else sha256[:10]
