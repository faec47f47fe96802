"""A1111's settings (/sdapi/v1/options) as a persisted store of this server.

A1111 clients POST any of its hundreds of settings and read them back with GET. easel keeps
every key it is sent in EASEL_HOME/a1111-options.json (a JSON file, replaced atomically, so a
crash leaves the old or the new file, never half of one), and applies the few it understands
(APPLIED: the model, the VAE, clip skip) to ServerState, checked as a generation would check
them. The rest are stored and listed but change nothing, and the POST reply says so by name
({"applied": [...], "not_applied": [...]}, where A1111 answers null). At startup the applied
settings are restored from the file, checked again; one that no longer resolves (a deleted
model) is logged and left at easel's default, never a server that fails to start.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import EaselError, InvalidRequest, ModelNotFound
from easel.request import MAX_CLIP_SKIP, shown_value

if TYPE_CHECKING:
    from easel.server.state import ServerState

log = logging.getLogger("easel.server")

FILE_NAME = "a1111-options.json"
CLIP_OPTION = "CLIP_stop_at_last_layers"
APPLIED = ("sd_model_checkpoint", "sd_vae", CLIP_OPTION)
AUTOMATIC_VAE = ("", "automatic", "none")  # A1111's sd_vae values for "the model's own VAE"


def vae_setting(value: Any, state: ServerState, *, field: str) -> str | None:
    """A1111's sd_vae -> the request's vae: "Automatic"/"None" -> None (the model's own), else a
    VAE the server lists (/sd-vae); anything else is a 422 naming `field`."""
    if not isinstance(value, str):
        raise InvalidRequest(
            f"invalid {field}={value!r}: expected a VAE name (a string)", field=field, value=value
        )
    if value.strip().lower() in AUTOMATIC_VAE:
        return None
    return state.policy.vae_reference(value, field=field, listed_only=True)


def options_path(state: ServerState) -> Path:
    return state.settings.home / FILE_NAME


def read_store(path: Path) -> dict[str, Any]:
    """The stored settings; none yet (or an unreadable file, logged) is an empty store."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring the unreadable A1111 options file %s: %s", path, error)
        return {}
    return stored if isinstance(stored, dict) else {}


def write_store(path: Path, values: dict[str, Any]) -> None:
    """Replace the store with `values` atomically (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".a1111-options.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(values, file, ensure_ascii=False, indent=1, sort_keys=True, allow_nan=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def resolve_applied(state: ServerState, values: dict[str, Any]) -> dict[str, Any]:
    """The ServerState fields the applied keys in `values` set ({"current_model": ...}), each
    checked (blocking I/O: reads model configs); a bad value is an InvalidRequest (or
    ModelNotFound) naming its key, and nothing is set."""
    from easel.models.cache import detect_family

    changes: dict[str, Any] = {}
    if values.get("sd_vae") is not None:
        changes["current_vae"] = vae_setting(values["sd_vae"], state, field="sd_vae")
    if values.get(CLIP_OPTION) is not None:
        clip = values[CLIP_OPTION]
        if not isinstance(clip, int) or isinstance(clip, bool) or not 1 <= clip <= MAX_CLIP_SKIP:
            raise InvalidRequest(
                f"invalid {CLIP_OPTION}={shown_value(clip)}: expected a whole number from 1 (no skip) to "
                f"{MAX_CLIP_SKIP}",
                field=CLIP_OPTION,
                value=clip,
            )
        changes["current_clip_skip"] = None if clip == 1 else clip
    title = values.get("sd_model_checkpoint")
    if title is not None:
        if not isinstance(title, str):
            raise InvalidRequest(
                f"invalid sd_model_checkpoint={shown_value(title)}: expected a model title (a string)",
                field="sd_model_checkpoint",
                value=title,
            )
        reference = state.policy.model_reference(title, field="sd_model_checkpoint")
        if reference is not None:
            try:
                detect_family(state.engine.resolve_model(reference))
            except InvalidRequest as error:
                raise InvalidRequest(str(error), field="sd_model_checkpoint", value=reference) from None
            except ModelNotFound as error:
                error.field = "sd_model_checkpoint"  # type: ignore[attr-defined]
                raise
        changes["current_model"] = reference
    return changes


def store_options(state: ServerState, sent: dict[str, Any]) -> dict[str, list[str]]:
    """POST /options: check the applied keys, store every key, then apply; the reply names
    which keys were applied and which were only stored."""
    try:
        json.dumps(sent, allow_nan=False)
    except ValueError as error:  # NaN/Infinity: the store is JSON, and JSON cannot carry them
        raise InvalidRequest(f"invalid options: {error}", field="options") from None
    changes = resolve_applied(state, sent)
    path = options_path(state)
    write_store(path, {**read_store(path), **sent})
    for name, value in changes.items():
        setattr(state, name, value)
    return {
        "applied": sorted(key for key in sent if key in APPLIED),
        "not_applied": sorted(key for key in sent if key not in APPLIED),
    }


def remember_applied(state: ServerState, values: dict[str, Any]) -> None:
    """Store applied settings a generation kept (override_settings_restore_afterwards: false)."""
    kept = {key: value for key, value in values.items() if key in APPLIED}
    if kept:
        path = options_path(state)
        write_store(path, {**read_store(path), **kept})


def restore_options(state: ServerState) -> None:
    """At startup: the applied settings from the store, each checked; one that fails is logged
    and left at easel's default."""
    stored = read_store(options_path(state))
    for key in APPLIED:
        if stored.get(key) is None:
            continue
        try:
            changes = resolve_applied(state, {key: stored[key]})
        except EaselError as error:
            log.warning("not restoring the stored A1111 option %s=%r: %s", key, stored[key], error)
            continue
        for name, value in changes.items():
            setattr(state, name, value)


def current_options(state: ServerState) -> dict[str, Any]:
    """GET /options: every stored key, with the applied ones at their current values."""
    from easel.server.policy import DEMO_TITLE

    return {
        "sd_checkpoint_hash": None,
        "samples_format": "png",
        **read_store(options_path(state)),
        "sd_model_checkpoint": state.current_model or DEMO_TITLE,
        "sd_vae": state.current_vae or "Automatic",
        CLIP_OPTION: state.current_clip_skip or 1,
    }
