"""ServerState: what the routes share, one per app (app.state.easel), and the helpers the
routers use to show it. The app (server/app.py) creates it; the routers import it from here,
so they never import the app that includes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # at runtime: FastAPI reads state_of's annotation

from easel.config import Settings

if TYPE_CHECKING:
    from easel.engine import Easel
    from easel.server.jobs import JobQueue
    from easel.server.policy import DoorPolicy, ModelEntry
    from easel.storage.gallery import Gallery


@dataclass
class ServerState:
    """Everything the routes share, created by create_app and reachable from each request."""

    settings: Settings
    engine: Easel
    gallery: Gallery
    queue: JobQueue
    policy: DoorPolicy
    current_model: str | None = None  # A1111's sd_model_checkpoint (None: the bundled model)
    current_vae: str | None = None  # A1111's sd_vae (None: "Automatic", the model's own VAE)
    current_clip_skip: int | None = None  # A1111's CLIP_stop_at_last_layers (None: 1, no skip)
    bind: tuple[str, int] | None = None  # host and port `easel serve` listens on (A1111 cmd-flags)

    def models(self) -> list[ModelEntry]:
        from easel.server.policy import list_models

        return list_models()


def state_of(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving this request."""
    return request.app.state.easel


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("easel")
    except PackageNotFoundError:
        return "0+unknown"


def public_models(state: ServerState) -> list[dict[str, Any]]:
    """The models, the server's current one (A1111's sd_model_checkpoint, else the bundled
    model) marked `default`: the web UI starts with it selected."""
    return [{**entry.public(), "default": entry.reference == state.current_model} for entry in state.models()]


def public_embeddings(state: ServerState) -> list[dict[str, Any]]:
    """The embeddings folder's files (read fresh), readable or not, without server paths:
    name, vectors, width, family, sha256 and `error` (None when readable)."""
    from easel.models.embeddings import list_embeddings

    settings = state.settings
    return [
        {key: entry[key] for key in ("name", "vectors", "width", "family", "sha256", "error")}
        for entry in list_embeddings(settings.embeddings_folder, settings.home / "hashes.json")
    ]


def public_loras(state: ServerState) -> list[dict[str, Any]]:
    """The LoRA folder's files as the native API lists them (no server paths)."""
    from easel.models.lora import list_loras

    settings = state.settings
    return [
        {key: entry[key] for key in ("name", "family", "hash", "sha256")}
        for entry in list_loras(settings.loras_folder, settings.home / "hashes.json")
    ]
