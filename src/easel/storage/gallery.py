"""The gallery: image files under EASEL_HOME plus one SQLite database that indexes them.

Layout:  <home>/gallery/gallery.db (WAL), <home>/gallery/images/YYYY-MM-DD/<id>.png,
<home>/gallery/inputs/<sha256>.png (init, mask and control images, stored once by content).

Crash safety comes from ordering, not luck: an image file is written to a temporary name,
fsynced and renamed into place before its row is inserted; a delete removes the file before
the row. Opening the gallery reconciles what a crash can leave behind: temporary files are
removed, rows whose file is gone are dropped, and complete files without a row (the crash
hit between rename and insert) are indexed again from the metadata they carry. So a row
never points at a missing or half-written file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from easel.errors import InvalidRequest
from easel.storage.database import reading, transaction
from easel.storage.files import TEMP_SUFFIX, write_atomically

if TYPE_CHECKING:
    from PIL.Image import Image

    from easel.result import GenerationResult

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
PREFIX_PATTERN = re.compile(r"^[0-9a-f]{1,32}$")
SCHEMA_VERSION = 1
COLUMNS = (
    "id", "created_at", "file", "kind", "model", "prompt", "negative_prompt", "seed", "width", "height",
    "image_index", "parent_id", "members", "nsfw", "request_json",
)  # fmt: skip


@dataclass(frozen=True)
class GalleryEntry:
    """One row: an image (or a grid) and what made it."""

    id: str
    created_at: str
    path: Path
    kind: str  # "image" | "grid"
    model: str
    prompt: str
    negative_prompt: str
    seed: int | None
    width: int
    height: int
    image_index: int
    parent_id: str | None
    members: list[str]  # for a grid: the ids of the images it shows
    nsfw: bool
    request: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


class Gallery:
    """Images and their index; safe to use from several threads (one connection per call)."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "gallery"
        self.database = self.root / "gallery.db"
        self.root.mkdir(parents=True, exist_ok=True)
        with transaction(self.database) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS images ("
                "id TEXT PRIMARY KEY, created_at TEXT NOT NULL, file TEXT NOT NULL UNIQUE, "
                "kind TEXT NOT NULL, "
                "model TEXT, prompt TEXT, negative_prompt TEXT, seed INTEGER, width INTEGER, height INTEGER, "
                "image_index INTEGER, parent_id TEXT, members TEXT, nsfw INTEGER, request_json TEXT)"
            )
            connection.execute("CREATE INDEX IF NOT EXISTS images_created ON images(created_at)")
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.reconcile()

    # -- writing ------------------------------------------------------------------------------

    def add_result(
        self,
        result: GenerationResult,
        *,
        grid: bool = False,
        parent_id: str | None = None,
        indices: list[int] | None = None,
    ) -> list[GalleryEntry]:
        """Store the images of `result` (all, or those at `indices`) and its grid when asked."""
        if result.init_image is not None:
            stored = self.store_input(result.init_image)
            result = dataclasses.replace(
                result, request=result.request.model_copy(update={"init_image": stored})
            )
        if result.mask_image is not None:  # as read and fitted: inverting and blurring it again replays
            stored = self.store_input(result.mask_image)
            result = dataclasses.replace(
                result, request=result.request.model_copy(update={"mask_image": stored})
            )
        if result.reference_images:  # as read: the family resizes them again the same way on replay
            stored_references = [self.store_input(image) for image in result.reference_images]
            result = dataclasses.replace(
                result, request=result.request.model_copy(update={"reference_images": stored_references})
            )
        if result.control_inputs:  # the fitted, unprocessed images: preprocessing them again replays
            units = [
                unit.model_copy(update={"image": self.store_input(image)})
                for unit, image in zip(result.request.controls, result.control_inputs, strict=True)
            ]
            request = result.request.model_copy(update={"controls": units})
            result = dataclasses.replace(result, request=request)
        chosen = range(len(result.images)) if indices is None else indices
        entries = [self._add(result, index, parent_id=parent_id) for index in chosen]
        if grid:
            entries.append(self._add_grid(result, [entry.id for entry in entries]))
        return entries

    def store_input(self, image: Image) -> str:
        """Save an input image once, named by the hash of its PNG encoding; returns the
        `easel-input:` reference recipes use (no filesystem path leaves the gallery)."""
        from easel.storage.images import INPUT_SCHEME

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        name = f"{hashlib.sha256(data).hexdigest()}.png"
        path = inputs_folder(self.root.parent) / name
        if not path.is_file():
            write_atomically(path, data)
        return INPUT_SCHEME + name

    def _add(self, result: GenerationResult, index: int, *, parent_id: str | None) -> GalleryEntry:
        from easel.storage.metadata import image_document

        image_id = uuid.uuid4().hex
        created = _now()
        path = self._image_path(image_id, created)
        write_atomically(path, result.encode(index, ".png"))
        request = result.request
        row = {
            "id": image_id, "created_at": created, "file": self._relative(path), "kind": "image",
            "model": result.model_name, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
            "seed": result.seeds[index], "width": request.width, "height": request.height,
            "image_index": index, "parent_id": parent_id, "members": "[]", "nsfw": int(result.nsfw[index]),
            "request_json": json.dumps(image_document(result, index)["request"], ensure_ascii=False),
        }  # fmt: skip
        self._insert(row)
        return self._entry(row)

    def _add_grid(self, result: GenerationResult, members: list[str]) -> GalleryEntry:
        image_id = uuid.uuid4().hex
        created = _now()
        path = self._image_path(image_id, created)
        from easel.storage.metadata import encode_image

        document = {"schema": "easel.grid/1", "members": members}
        write_atomically(path, encode_image(result.grid(), ".png", result.parameters(0), document))
        request = result.request
        row = {
            "id": image_id, "created_at": created, "file": self._relative(path), "kind": "grid",
            "model": result.model_name, "prompt": request.prompt, "negative_prompt": request.negative_prompt,
            "seed": request.seed, "width": request.width, "height": request.height, "image_index": 0,
            "parent_id": None, "members": json.dumps(members), "nsfw": int(any(result.nsfw)),
            "request_json": json.dumps(request.model_dump(mode="json"), ensure_ascii=False),
        }  # fmt: skip
        self._insert(row)
        return self._entry(row)

    def delete(self, image_id: str) -> None:
        """Remove an image: the file first, then its row (see the module docstring)."""
        entry = self.get(image_id)
        entry.path.unlink(missing_ok=True)
        with transaction(self.database) as connection:
            connection.execute("DELETE FROM images WHERE id = ?", (entry.id,))

    # -- reading ------------------------------------------------------------------------------

    def get(self, image_id: str) -> GalleryEntry:
        """The entry for `image_id`; InvalidRequest for a malformed id, KeyError if absent."""
        if not ID_PATTERN.match(image_id or ""):
            raise InvalidRequest(
                f"invalid id={image_id!r}: gallery ids are 32 hex characters", field="id", value=image_id
            )
        with reading(self.database) as connection:
            row = connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise InvalidRequest(
                f"invalid id={image_id!r}: no such image in the gallery", field="id", value=image_id
            )
        return self._entry(dict(zip(COLUMNS, row, strict=True)))

    def resolve(self, prefix: str) -> GalleryEntry:
        """The one entry whose id starts with `prefix` (as git resolves short hashes).

        InvalidRequest for a malformed prefix, an unknown one, or one that names several
        images (the message lists them)."""
        if not PREFIX_PATTERN.fullmatch(prefix or ""):
            raise InvalidRequest(
                f"invalid id={prefix!r}: gallery ids are 32 hex characters (a unique prefix will do)",
                field="id",
                value=prefix,
            )
        with reading(self.database) as connection:
            ids = [
                row[0]
                for row in connection.execute(
                    "SELECT id FROM images WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 11",
                    (len(prefix), prefix),
                ).fetchall()
            ]
        if len(ids) > 1:
            shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            raise InvalidRequest(
                f"invalid id={prefix!r}: ambiguous, it starts several gallery ids: {shown}",
                field="id",
                value=prefix,
            )
        if not ids:
            raise InvalidRequest(
                f"invalid id={prefix!r}: no such image in the gallery", field="id", value=prefix
            )
        return self.get(ids[0])

    def find_by_path(self, path: Path) -> GalleryEntry | None:
        """The entry whose file is `path`, if it lies in this gallery."""
        try:
            relative = self._relative(Path(path).resolve())
        except ValueError:
            return None
        with reading(self.database) as connection:
            row = connection.execute(
                f"SELECT {', '.join(COLUMNS)} FROM images WHERE file = ?", (relative,)
            ).fetchone()
        return None if row is None else self._entry(dict(zip(COLUMNS, row, strict=True)))

    def list(
        self, *, text: str | None = None, model: str | None = None, since: str | None = None,
        until: str | None = None, limit: int = 50,
    ) -> list[GalleryEntry]:  # fmt: skip
        """Newest first, filtered by prompt text, model name and ISO date range."""
        clauses, values = [], []
        if text:
            clauses.append("(prompt LIKE ? ESCAPE '\\' OR negative_prompt LIKE ? ESCAPE '\\')")
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            values += [pattern, pattern]
        if model:
            clauses.append("model = ?")
            values.append(model)
        for bound, operator in ((since, ">="), (until, "<")):
            if bound:
                clauses.append(f"created_at {operator} ?")
                values.append(_iso_date(bound))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {', '.join(COLUMNS)} FROM images {where} ORDER BY created_at DESC, id LIMIT ?"
        with reading(self.database) as connection:
            rows = connection.execute(query, (*values, max(1, limit))).fetchall()
        return [self._entry(dict(zip(COLUMNS, row, strict=True))) for row in rows]

    # -- consistency --------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Repair what a crash can leave: temp files, rows without files, files without rows."""
        images = self.root / "images"
        for leftover in images.rglob(f"*{TEMP_SUFFIX}") if images.exists() else ():
            leftover.unlink(missing_ok=True)
        with transaction(self.database) as connection:
            known = dict(connection.execute("SELECT file, id FROM images").fetchall())
            for file, image_id in known.items():
                if not (self.root / file).is_file():
                    connection.execute("DELETE FROM images WHERE id = ?", (image_id,))
        for path in images.rglob("*.png") if images.exists() else ():
            if self._relative(path) not in known and ID_PATTERN.match(path.stem):
                self._adopt(path)

    def _adopt(self, path: Path) -> None:
        from easel.storage.metadata import read_metadata

        document = read_metadata(path).document or {}
        request = document.get("request", {})
        members = document.get("members", [])
        row = {
            "id": path.stem, "created_at": _now(), "file": self._relative(path),
            "kind": "grid" if members else "image", "model": (document.get("model") or {}).get("name", ""),
            "prompt": request.get("prompt", ""), "negative_prompt": request.get("negative_prompt", ""),
            "seed": document.get("seed", request.get("seed")), "width": request.get("width") or 0,
            "height": request.get("height") or 0, "image_index": document.get("image_index", 0),
            "parent_id": None, "members": json.dumps(members), "nsfw": int(bool(document.get("nsfw"))),
            "request_json": json.dumps(request, ensure_ascii=False),
        }  # fmt: skip
        self._insert(row)

    # -- plumbing -----------------------------------------------------------------------------

    def _insert(self, row: dict[str, Any]) -> None:
        with transaction(self.database) as connection:
            connection.execute(
                f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                tuple(row[column] for column in COLUMNS),
            )

    def _image_path(self, image_id: str, created: str) -> Path:
        return self.root / "images" / created[:10] / f"{image_id}.png"

    def _relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def _entry(self, row: dict[str, Any]) -> GalleryEntry:
        path = (self.root / row["file"]).resolve()
        if not path.is_relative_to(self.root.resolve()):  # a tampered row must not escape the gallery
            raise InvalidRequest(
                f"gallery row {row['id']!r} points outside the gallery", field="id", value=row["id"]
            )
        return GalleryEntry(
            id=row["id"], created_at=row["created_at"], path=path, kind=row["kind"], model=row["model"] or "",
            prompt=row["prompt"] or "", negative_prompt=row["negative_prompt"] or "", seed=row["seed"],
            width=row["width"] or 0, height=row["height"] or 0, image_index=row["image_index"] or 0,
            parent_id=row["parent_id"], members=json.loads(row["members"] or "[]"), nsfw=bool(row["nsfw"]),
            request=json.loads(row["request_json"] or "{}"),
        )  # fmt: skip


def inputs_folder(home: Path) -> Path:
    """Where the gallery under `home` keeps stored input images."""
    return Path(home) / "gallery" / "inputs"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _iso_date(value: str) -> str:
    """A date or timestamp in the form created_at uses, so text comparison orders correctly."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"invalid date={value!r}: use YYYY-MM-DD or an ISO timestamp", field="date", value=value
        ) from None
    if "T" not in value and " " not in value:
        return parsed.date().isoformat()
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")
