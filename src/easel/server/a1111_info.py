"""A1111's informational routes that clients read before they generate (webuiapi's
get_cmd_flags, get_memory, get_prompt_styles, ...): each answers what is true of this server,
empty lists where easel has no such thing (face restorers, hypernetworks, scripts), and
/interrogate, which easel does not build, is refused by name rather than left a bare 404."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from easel.errors import UnsupportedFeature
from easel.server import openapi as api
from easel.server.openapi import A1111, documented
from easel.server.state import ServerState, state_of

State = Annotated[ServerState, Depends(state_of)]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_flags(state: ServerState) -> dict[str, Any]:
    """The A1111 flags that describe this server; flags for what easel does not have are left
    out rather than reported at values that would not be true."""
    settings = state.settings
    host, port = state.bind or ("127.0.0.1", None)
    return {
        "api": True,
        "nowebui": False,  # the web UI is served at /
        "listen": host not in LOOPBACK,
        "server_name": None if host in LOOPBACK else host,
        "port": port,
        "data_dir": str(settings.home),
        "lora_dir": str(settings.loras_folder),
        "embeddings_dir": str(settings.embeddings_folder),
        "styles_file": [str(settings.styles_path)],
        "xformers": settings.attention == "xformers",
        "opt_sdp_attention": settings.attention == "sdpa",
        "opt_split_attention": settings.attention == "slicing",
        "medvram": settings.offload == "model",
        "lowvram": settings.offload == "sequential",
        "no_half": settings.dtype == "float32",
        "use_cpu": ["all"] if settings.device == "cpu" else [],
        "disable_safe_unpickle": settings.allow_pickle,
    }


def memory() -> dict[str, Any]:
    """RAM of this machine (psutil, else /proc/meminfo) and CUDA memory (torch), in bytes."""
    return {"ram": _ram(), "cuda": _cuda()}


def _ram() -> dict[str, Any]:
    try:
        import psutil
    except ImportError:
        psutil = None  # type: ignore[assignment]
    if psutil is not None:
        virtual = psutil.virtual_memory()
        return {"free": virtual.available, "used": virtual.total - virtual.available, "total": virtual.total}
    try:
        info = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.split()[1:2] and line.split()[1].isdigit()
        }
        total, free = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, KeyError, IndexError, ValueError) as error:
        return {"error": f"cannot read the memory size: {error}"}
    return {"free": free, "used": total - free, "total": total}


def _cuda() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"error": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"error": "CUDA is not available"}
    free, total = torch.cuda.mem_get_info()
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
        "reserved": {"current": torch.cuda.memory_reserved(), "peak": torch.cuda.max_memory_reserved()},
    }


def prompt_styles(state: ServerState) -> list[dict[str, Any]]:
    """The styles in styles.csv (EASEL_STYLES_FILE), as A1111 lists them."""
    from easel.styles import load_styles

    return [
        {"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
        for style in load_styles(state.settings.styles_path).values()
    ]


def add_routes(router: APIRouter) -> None:
    """Register the informational routes on the /sdapi/v1 router."""

    @router.get("/cmd-flags", **documented(A1111, api.A1111CmdFlags))
    async def get_cmd_flags(state: State) -> dict[str, Any]:
        return cmd_flags(state)

    @router.get("/memory", **documented(A1111, api.A1111Memory))
    async def get_memory() -> dict[str, Any]:
        return await asyncio.to_thread(memory)

    @router.get("/prompt-styles", **documented(A1111, list[api.PromptStyle], 422))
    async def get_prompt_styles(state: State) -> list[dict[str, Any]]:
        return await asyncio.to_thread(prompt_styles, state)

    @router.get("/face-restorers", **documented(A1111, list[dict[str, Any]]))
    async def face_restorers() -> list[Any]:
        """None: easel has no face restoration (restore_faces: true is refused)."""
        return []

    @router.get("/hypernetworks", **documented(A1111, list[dict[str, Any]]))
    async def hypernetworks() -> list[Any]:
        """None: easel does not load hypernetworks."""
        return []

    @router.get("/script-info", **documented(A1111, list[api.A1111ScriptInfo]))
    async def script_info() -> list[Any]:
        """None: easel runs no A1111 scripts (script_name is refused by name)."""
        return []

    @router.post("/interrogate", **documented(A1111, api.NULL, 422))
    async def interrogate() -> None:
        """Refused: easel has no CLIP/DeepBooru interrogator (image captioning)."""
        raise UnsupportedFeature(
            "/sdapi/v1/interrogate (CLIP/DeepBooru image captioning) is not built in easel"
        )
