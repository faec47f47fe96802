"""Settings: how this process runs models, read once at the door and passed down.

Nothing below the doors reads the environment; the CLI and the server build one Settings
(from EASEL_* variables plus their own flags) and hand it to Easel.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


def _default_home() -> Path:
    return Path.home() / ".easel"


@dataclass(frozen=True)
class Settings:
    """Process-wide choices; every field has an EASEL_<NAME> environment variable."""

    home: Path = field(default_factory=_default_home)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    allow_pickle: bool = False  # load .ckpt/.bin/.pt checkpoints (they can run code)
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    max_cached_models: int = 2  # base pipelines kept in memory

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from EASEL_* variables, then explicit overrides (e.g. CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "EASEL_HOME" in env:
            values["home"] = Path(env["EASEL_HOME"]).expanduser()
        for name in ("device", "dtype"):
            if f"EASEL_{name.upper()}" in env:
                values[name] = env[f"EASEL_{name.upper()}"]
        if "EASEL_ALLOW_PICKLE" in env:
            values["allow_pickle"] = env["EASEL_ALLOW_PICKLE"].lower() in ("1", "true", "yes")
        for name in ("threads", "max_cached_models"):
            raw = env.get(f"EASEL_{name.upper()}")
            if raw:
                values[name] = int(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)  # type: ignore[arg-type]
