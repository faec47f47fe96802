"""Settings: how this process runs models, read once at the door and passed down.

Nothing below the doors reads the environment; the CLI and the server build one Settings
(from EASEL_* variables plus their own flags) and hand it to Easel. Every field has an
EASEL_<FIELD NAME> variable, converted by the field's type, so adding a setting is adding
a field.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from easel.errors import InvalidRequest

ATTENTION = ("sdpa", "xformers", "slicing", "default")
OFFLOAD = ("none", "model", "sequential")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
VARIANTS = ("auto", "fp16", "none")
# quantised loading (easel.models.quantize): bitsandbytes int8 / nf4, torchao int8 / fp8 weights
QUANTIZE = ("none", "int8", "nf4", "torchao-int8", "torchao-fp8")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def _default_home() -> Path:
    return Path.home() / ".easel"


@dataclass(frozen=True)
class PerformanceOptions:
    """The speed/memory options of a loaded pipeline; part of the pipeline cache key, so a
    change loads a differently prepared pipeline instead of mutating a cached one."""

    attention: str = "sdpa"
    compile: bool = False
    compile_mode: str = "reduce-overhead"
    compile_fullgraph: bool = False
    offload: str = "none"
    vae_slicing: bool = False
    vae_tiling: bool = False
    channels_last: bool = False
    variant: str = "auto"
    quantize: str = "none"


@dataclass(frozen=True)
class Settings:
    """Process-wide choices; every field has an EASEL_<NAME> environment variable."""

    home: Path = field(default_factory=_default_home)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    allow_pickle: bool = False  # load .ckpt/.bin/.pt checkpoints (they can run code)
    threads: int | None = None  # torch CPU threads; None: 1 for small models on CPU, else torch's
    max_cached_models: int = 2  # base pipelines kept in memory
    lora_dir: Path | None = None  # LoRAs found by name; None: EASEL_HOME/loras
    embeddings_dir: Path | None = None  # textual-inversion embeddings; None: EASEL_HOME/embeddings
    upscaler_dir: Path | None = None  # model upscalers (ESRGAN, ...); None: EASEL_HOME/upscalers
    styles_file: Path | None = None  # A1111 prompt styles (styles.csv); None: EASEL_HOME/styles.csv
    # speed and memory (see PerformanceOptions and docs/performance.md)
    attention: str = "sdpa"  # sdpa | xformers | slicing | default (diffusers' own choice)
    compile: bool = False  # torch.compile the UNet
    compile_mode: str = "reduce-overhead"  # default | reduce-overhead | max-autotune
    compile_fullgraph: bool = False
    offload: str = "none"  # none | model | sequential (CPU offload; needs an accelerator)
    vae_slicing: bool = False  # decode a batch one image at a time
    vae_tiling: bool = False  # decode large images in tiles
    channels_last: bool = False  # UNet memory format
    variant: str = "auto"  # auto: fp16 weight files when dtype is float16 and they exist
    quantize: str = "none"  # for requests that leave it out: none | int8 | nf4 | torchao-int8 | torchao-fp8
    # the HTTP server (easel serve, src/easel/server)
    api_key: str | None = field(default=None, repr=False)  # when set, every route requires it
    queue_size: int = 64  # jobs waiting at most; more is answered 429 with Retry-After
    server_workers: int = 1  # generation workers: one per device, pipelines never run concurrently
    # batching (easel.batching): up to max_batch compatible queued jobs (1: off) gathered within
    # batch_window_ms run as one pipeline call; batched pixels may differ from solo ones (README)
    max_batch: int = 1
    batch_window_ms: int = 50
    max_pixels: int = 2048 * 2048  # width x height of one image
    max_steps: int = 150  # steps (and prior steps) per request
    max_images: int = 8  # images per request
    max_upload_bytes: int = 20 * 1024 * 1024  # one uploaded image (base64 bodies may be 4/3 of it)
    allow_url_images: bool = False  # init images by http(s) URL; off: server-side request forgery
    # live previews of running jobs (easel.previews): every N steps, 0 = off; how they are made
    preview_every: int = 5
    preview_method: str = "auto"  # auto (TAESD if cached and made for the VAE) | linear | taesd | none

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())  # accept str from callers
        if self.lora_dir is not None:
            object.__setattr__(self, "lora_dir", Path(self.lora_dir).expanduser())
        if self.embeddings_dir is not None:
            object.__setattr__(self, "embeddings_dir", Path(self.embeddings_dir).expanduser())
        if self.upscaler_dir is not None:
            object.__setattr__(self, "upscaler_dir", Path(self.upscaler_dir).expanduser())
        if self.styles_file is not None:
            object.__setattr__(self, "styles_file", Path(self.styles_file).expanduser())
        for name, allowed in (
            ("attention", ATTENTION),
            ("offload", OFFLOAD),
            ("compile_mode", COMPILE_MODES),
            ("variant", VARIANTS),
            ("quantize", QUANTIZE),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise InvalidRequest(
                    f"invalid {name}={value!r}: use one of {', '.join(allowed)}", field=name, value=value
                )
        if self.preview_method not in ("auto", "linear", "taesd", "none"):  # easel.previews.PREVIEW_METHODS
            raise InvalidRequest(
                f"invalid preview_method={self.preview_method!r}: use one of auto, linear, taesd, none",
                field="preview_method",
                value=self.preview_method,
            )
        if self.preview_every < 0:
            raise InvalidRequest(
                f"invalid preview_every={self.preview_every!r}: must be >= 0 (0: no previews)",
                field="preview_every",
                value=self.preview_every,
            )
        if self.max_batch < 1 or self.batch_window_ms < 0:
            name = "max_batch" if self.max_batch < 1 else "batch_window_ms"
            raise InvalidRequest(
                f"invalid {name}={getattr(self, name)!r}: must be >= {1 if name == 'max_batch' else 0}",
                field=name,
                value=getattr(self, name),
            )
        if self.threads is not None and self.threads < 1:
            raise InvalidRequest(
                f"invalid threads={self.threads!r}: must be >= 1", field="threads", value=self.threads
            )

    @property
    def loras_folder(self) -> Path:
        """Where LoRAs named without a path are looked up (EASEL_LORA_DIR)."""
        return self.lora_dir if self.lora_dir is not None else self.home / "loras"

    @property
    def embeddings_folder(self) -> Path:
        """Where textual-inversion embeddings are found by name (EASEL_EMBEDDINGS_DIR)."""
        return self.embeddings_dir if self.embeddings_dir is not None else self.home / "embeddings"

    @property
    def upscalers_folder(self) -> Path:
        """Where model upscalers are found by name (EASEL_UPSCALER_DIR)."""
        return self.upscaler_dir if self.upscaler_dir is not None else self.home / "upscalers"

    @property
    def styles_path(self) -> Path:
        """The A1111 styles.csv prompt styles are read from (EASEL_STYLES_FILE)."""
        return self.styles_file if self.styles_file is not None else self.home / "styles.csv"

    @property
    def performance(self) -> PerformanceOptions:
        return PerformanceOptions(**{f.name: getattr(self, f.name) for f in fields(PerformanceOptions)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from EASEL_* variables, then explicit overrides (e.g. CLI flags; None
        means "not given")."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, object] = {}
        for setting in fields(cls):
            raw = env.get(f"EASEL_{setting.name.upper()}")
            if raw is not None:
                values[setting.name] = _convert(setting.name, raw, hints[setting.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)  # type: ignore[arg-type]


def _convert(name: str, raw: str, hint: object) -> object:
    """An environment string as the field's type; errors name the variable."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    if optional and raw.strip() == "":
        return None
    variable = f"EASEL_{name.upper()}"
    if base is bool:
        if raw.strip().lower() in TRUE:
            return True
        if raw.strip().lower() in FALSE:
            return False
        raise InvalidRequest(
            f"invalid {variable}={raw!r}: use 1/0, true/false, yes/no", field=name, value=raw
        )
    if base is int:
        try:
            return int(raw)
        except ValueError:
            raise InvalidRequest(
                f"invalid {variable}={raw!r}: not an integer", field=name, value=raw
            ) from None
    if base is float:
        try:
            return float(raw)
        except ValueError:
            raise InvalidRequest(f"invalid {variable}={raw!r}: not a number", field=name, value=raw) from None
    if base is Path:
        return Path(raw).expanduser()
    return raw
