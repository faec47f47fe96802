"""How model references read as text, with no I/O: the weight-file suffixes, the bundled
ControlNet's name, and the short names A1111 metadata shows for a ControlNet unit's model and
a VAE. Below both models/ (which finds and loads what the references name) and storage/
(which writes the names into image metadata), so neither imports the other for them.
"""

from __future__ import annotations

import re
from pathlib import Path

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
DEMO_CONTROL = "demo"  # the bundled demo ControlNet, by name (models/control.py's DEMO)


def control_display_name(reference: str) -> str:
    """The short name A1111 metadata shows as a unit's Model (the repo or folder name)."""
    if reference == DEMO_CONTROL:
        return "easel-demo-controlnet"
    return (
        Path(reference.rstrip("/")).stem
        if reference.lower().endswith(SAFE_SUFFIXES)
        else Path(reference.rstrip("/")).name
    )


def vae_display_name(reference: str) -> str:
    """The name A1111 metadata shows as "VAE": a file's name (as A1111 writes it,
    "sdxl_vae.safetensors"), a folder's name, or the repo id (so the name reads back). Decided
    from the text alone, so a replay writes the same metadata."""
    looks_like_path = (
        reference.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)
        or reference.startswith((".", "/", "~"))
        or "\\" in reference
        or reference.count("/") != 1
    )
    return re.split(r"[/\\]", reference.rstrip("/\\"))[-1] if looks_like_path else reference
