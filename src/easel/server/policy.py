"""What the server accepts beyond what GenerationRequest itself validates.

GenerationRequest is the contract for every door; a network door adds the limits a shared
machine needs (pixels, steps, images per request, upload bytes, decompression bombs) and
refuses what would let a remote caller reach the server's file system or network: local
paths as models or images, and image URLs unless the operator turned them on (server-side
request forgery). Each refusal is an InvalidRequest naming the field, so it is a clear 4xx.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easel.config import Settings
from easel.errors import InvalidRequest
from easel.request import GenerationRequest
from easel.server.errors import PayloadTooLarge

DEMO_TITLE = "easel-demo"  # the bundled model as the server lists it (model=None)


@dataclass(frozen=True)
class ModelEntry:
    """A model the server can name without revealing where it lives."""

    title: str  # what clients send back: a repo id, or DEMO_TITLE
    name: str
    pipeline: str | None = None  # model_index.json _class_name
    reference: str | None = field(default=None)  # the GenerationRequest.model value

    def public(self) -> dict[str, Any]:
        return {"title": self.title, "name": self.name, "pipeline": self.pipeline}


def list_models() -> list[ModelEntry]:
    """The bundled models plus every diffusers pipeline (model_index.json) in the HF cache."""
    from easel.models.reference import DEMO_INPAINT

    entries = [
        ModelEntry(DEMO_TITLE, DEMO_TITLE, "StableDiffusionPipeline", None),
        ModelEntry(DEMO_INPAINT, DEMO_INPAINT, "StableDiffusionInpaintPipeline", DEMO_INPAINT),
    ]
    for repo_id, class_name in _cached_repos("model_index.json"):
        entries.append(ModelEntry(repo_id, repo_id.rsplit("/", 1)[-1], class_name, repo_id))
    return entries


def list_control_models() -> list[str]:
    """`demo` (the bundled ControlNet) plus every ControlNet in the HF cache (ControlNetModel,
    FluxControlNetModel, SD3ControlNetModel, QwenImageControlNetModel, ZImageControlNetModel:
    easel.models.control.CONTROL_CLASSES)."""
    from easel.models.control import CONTROL_CLASSES

    return ["demo", *(repo_id for repo_id, name in _cached_repos("config.json") if name in CONTROL_CLASSES)]


def list_vaes() -> list[str]:
    """Every AutoencoderKL repo (config.json at its root, such as madebyollin/sdxl-vae-fp16-fix)
    in the HF cache: the VAE overrides the server can name."""
    from easel.models.vae import VAE_CLASSES

    return [repo_id for repo_id, name in _cached_repos("config.json") if name in VAE_CLASSES]


def _cached_repos(config: str) -> list[tuple[str, str | None]]:
    """(repo id, the config's _class_name) of cached model repos that have `config` at their root."""
    import json

    try:
        from huggingface_hub import scan_cache_dir

        repos = sorted(scan_cache_dir().repos, key=lambda repo: repo.repo_id.lower())
    except Exception:  # no cache yet, or an unreadable one: the bundled models still work
        return []
    found = []
    for repo in repos:
        if repo.repo_type != "model":
            continue
        path = next(
            (f.file_path for rev in repo.revisions for f in rev.files if f.file_name == config
             and f.file_path.parent == rev.snapshot_path),
            None,
        )  # fmt: skip
        if path is None:
            continue
        try:
            class_name = json.loads(Path(path).read_text("utf-8")).get("_class_name")
        except (OSError, ValueError):
            class_name = None
        found.append((repo.repo_id, class_name))
    return found


class DoorPolicy:
    """Checks every request the server is about to queue; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self, request: GenerationRequest) -> GenerationRequest:
        from easel.limits import Limits

        limits = Limits.of(self.settings)
        limits.check(request)  # what the request states; the engine checks the rest once known
        updates: dict[str, Any] = {}
        for name in ("model", "refiner", "prior", "base_model"):
            value = getattr(request, name, None)
            if value is not None:
                updates[name] = self.model_reference(value, field=name)
        if getattr(request, "vae", None) is not None:
            updates["vae"] = self.vae_reference(request.vae, field="vae")
        for index, lora in enumerate(getattr(request, "loras", None) or ()):
            self.lora_reference(lora.name, field=f"loras[{index}].name")
        sizes = []  # input image sizes, in the order the engine takes the output size from them
        if request.init_image is not None:
            sizes.append(self.image_reference(request.init_image, field="init_image"))
        if getattr(request, "mask_image", None) is not None:  # fitted to the init image: no size of its own
            self.image_reference(request.mask_image, field="mask_image")
        for index, reference in enumerate(getattr(request, "reference_images", None) or ()):
            self.image_reference(reference, field=f"reference_images[{index}]")  # sized by the family
        for index, unit in enumerate(getattr(request, "controls", None) or ()):
            sizes.append(self.image_reference(unit.image, field=f"controls[{index}].image"))
            self.control_model_reference(unit.model, field=f"controls[{index}].model")
        if sizes and sizes[0] is not None and (request.width is None or request.height is None):
            # the engine will size the output from this image (multiples of 8, plus any
            # outpainted border): refuse it now
            width, height = (max(8, side // 8 * 8) for side in sizes[0])
            if getattr(request, "outpaint", None) is not None:
                left, top, right, bottom = request.outpaint
                width, height = width + left + right, height + top + bottom
            sized = request.model_copy(
                update={"width": request.width or width, "height": request.height or height}
            )
            limits.check(sized, defaulted=frozenset({"width", "height"}))
        return request.model_copy(update=updates) if updates else request

    def lora_reference(self, value: str, *, field: str) -> None:
        """A LoRA in the server's LoRA folder, or a hub file org/repo/file.safetensors; never a
        path elsewhere on the server (nor a probe of which paths exist)."""
        from easel.models.lora import HUB_FILE, lora_names

        names = lora_names(self.settings.loras_folder)
        if value in names or Path(value).with_suffix("").as_posix() in names:
            return
        if HUB_FILE.match(value) and ".." not in value and not value.startswith(("/", "~", ".")):
            return
        raise InvalidRequest(
            f"invalid {field}={value!r}: not a LoRA in the server's LoRA folder (GET /api/v1/loras lists "
            "them) and not a hub file org/repo/file.safetensors; local paths are not accepted over HTTP",
            field=field,
            value=value,
        )

    def control_model_reference(self, value: str, *, field: str) -> str:
        """A ControlNet: `demo` (the bundled one) or a hub repo id; never a path on the server."""
        from easel.models.control import DEMO

        return value if value == DEMO else self._hub_id(value.split(" [", 1)[0].strip(), value, field=field)

    def vae_reference(self, value: str, *, field: str, listed_only: bool = False) -> str:
        """A VAE: a listed one (by repo id or its short name, as /sdapi/v1/sd-vae lists them) or,
        unless `listed_only`, a hub repo id; never a path on the server."""
        name = value.split(" [", 1)[0].strip()  # A1111 names may carry " [hash]"
        vaes = list_vaes()
        listed = next((repo for repo in vaes if name in (repo, repo.rsplit("/", 1)[-1])), None)
        if listed is not None:
            return listed
        if listed_only:
            known = ", ".join(vaes) or "none are in the Hugging Face cache"
            raise InvalidRequest(
                f"invalid {field}={value!r}: not a VAE this server has (known: Automatic, None, {known})",
                field=field,
                value=value,
            )
        return self._hub_id(name, value, field=field)

    def model_reference(self, value: str, *, field: str) -> str | None:
        """A listed title or a hub repo id; never a path on the server."""
        title = value.split(" [", 1)[0].strip()  # A1111 titles carry " [hash]"
        if title == DEMO_TITLE:
            return None
        from easel.models.reference import DEMO_INPAINT

        if title == DEMO_INPAINT:
            return DEMO_INPAINT
        return self._hub_id(title, value, field=field)

    @staticmethod
    def _hub_id(title: str, value: str, *, field: str) -> str:
        from easel.models.reference import HUB_ID, PICKLE_SUFFIXES, SAFE_SUFFIXES, check_hub_id

        looks_like_path = (
            title.startswith((".", "/", "~")) or "\\" in title or title.count("/") != 1
            or title.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES) or Path(title).exists()
        )  # fmt: skip
        if looks_like_path or not HUB_ID.match(title):
            raise InvalidRequest(
                f"invalid {field}={value!r}: the server takes a listed model title or a Hugging Face "
                "repo id (org/name); local paths are not accepted over HTTP",
                field=field,
                value=value,
            )
        check_hub_id(title, field=field, value=value)  # huggingface_hub's own rules: 96 chars, no "..", ...
        return title

    def image_reference(self, value: str, *, field: str) -> tuple[int, int] | None:
        """Data URLs are checked here (their size returned); URLs only when allowed (not
        fetched here: size unknown); paths never."""
        if value.startswith("data:"):
            return self.image_bytes(
                _decode_base64(value.partition(",")[2], field=field, limit=self._b64_limit), field=field
            )
        if value.startswith(("http://", "https://")):
            if not self.settings.allow_url_images:
                raise InvalidRequest(
                    f"invalid {field}: image URLs are off on this server (they would let callers make it "
                    "fetch any address); send the image as base64 / a data URL, or start the server "
                    "with --allow-url-images",
                    field=field,
                )
            return None
        raise InvalidRequest(
            f"invalid {field}: the server does not read local paths; send the image as base64 / a data URL",
            field=field,
        )

    def data_url(self, data: bytes | str, *, field: str) -> str:
        """An uploaded image (bytes, base64 or a data URL) as a checked PNG-labelled data URL."""
        if not isinstance(data, bytes | str):  # JSON a client sent: a number, a list, an object
            raise InvalidRequest(
                f"invalid {field}: expected a base64 image (a string), got {type(data).__name__}", field=field
            )
        if isinstance(data, str):
            data = _decode_base64(data.partition(",")[2] if data.startswith("data:") else data,
                                  field=field, limit=self._b64_limit)  # fmt: skip
        self.image_bytes(data, field=field)
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

    def image_bytes(self, data: bytes, *, field: str) -> tuple[int, int]:
        """Size in bytes and in pixels (read from the header, before any decoding); returns
        (width, height)."""
        from easel.storage.images import check_pixel_limit, opened_image

        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"invalid {field}: {len(data)} bytes is more than this server's limit of "
                f"{self.settings.max_upload_bytes}",
                field=field,
                value=len(data),
            )
        with opened_image(data, field=field) as image:  # the header only; formats, text-chunk bombs
            width, height = image.size
        check_pixel_limit(width, height, field=field, value=f"{width}x{height}")
        return width, height

    @property
    def _b64_limit(self) -> int:
        return self.settings.max_upload_bytes * 4 // 3 + 4


def _decode_base64(text: str, *, field: str, limit: int) -> bytes:
    if len(text) > limit:
        raise PayloadTooLarge(
            f"invalid {field}: {len(text)} base64 characters is more than this server accepts", field=field
        )
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"invalid {field}: not valid base64", field=field) from None
