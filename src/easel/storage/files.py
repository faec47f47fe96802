"""Atomic file writes: a reader (or a crash) never sees half a file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".part"


def write_atomically(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it into place.

    The temporary file is created with mode 0o666 minus the umask (unlike mkstemp's 0o600),
    so images end up readable like any file the user's programs write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
