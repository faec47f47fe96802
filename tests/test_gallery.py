"""The gallery: files plus SQLite, atomic writes, crash recovery, safe ids."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import types

import pytest
from PIL import Image

from easel import GenerationRequest, InvalidRequest
from easel.result import GenerationResult
from easel.storage.gallery import Gallery
from easel.storage.metadata import read_metadata


def fake_result(
    prompt: str = "a red circle", seed: int = 1, count: int = 1, model: str = "tiny"
) -> GenerationResult:
    """A concrete result without running a model (the gallery only stores it)."""
    request = GenerationRequest(
        prompt=prompt, seed=seed, steps=2, guidance_scale=7.5, width=16, height=16, num_images=count
    )
    images = [Image.new("RGB", (16, 16), (seed % 256, i * 40, 0)) for i in range(count)]
    return GenerationResult(images=images, request=request, nsfw=[False] * count, model_family="sd15",
                            model_name=model, model_hashes={"base": "ab" * 32}, sampler="PNDM")  # fmt: skip


def test_add_list_show_delete(tmp_path):
    gallery = Gallery(tmp_path)
    first = gallery.add_result(fake_result("a red circle", 1, model="m1"))
    second = gallery.add_result(fake_result("a blue square", 2, count=2, model="m2"), grid=True)
    assert len(gallery.list()) == 4
    assert [e.prompt for e in gallery.list(text="blue", limit=10) if e.kind == "image"] == [
        "a blue square"
    ] * 2
    assert {e.id for e in gallery.list(model="m1")} == {first[0].id}
    grid = second[-1]
    assert grid.kind == "grid" and grid.members == [second[0].id, second[1].id]
    assert read_metadata(grid.path).document["members"] == grid.members
    assert gallery.get(first[0].id).seed == 1
    assert read_metadata(first[0].path).document["request"]["prompt"] == "a red circle"
    gallery.delete(first[0].id)
    assert not first[0].path.exists()
    with pytest.raises(InvalidRequest, match="no such image"):
        gallery.get(first[0].id)


def test_date_filters(tmp_path):
    gallery = Gallery(tmp_path)
    gallery.add_result(fake_result())
    assert len(gallery.list(since="2000-01-01")) == 1
    assert gallery.list(until="2000-01-01") == []
    with pytest.raises(InvalidRequest, match="invalid date='yesterday'"):
        gallery.list(since="yesterday")


def test_like_wildcards_are_literal(tmp_path):
    gallery = Gallery(tmp_path)
    gallery.add_result(fake_result("100% cotton"))
    gallery.add_result(fake_result("a cat"))
    assert [e.prompt for e in gallery.list(text="%")] == ["100% cotton"]


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "..", "", "A" * 32, "0" * 31, "0" * 32 + "/x"])
def test_path_traversal_and_malformed_ids_are_rejected(tmp_path, bad_id):
    gallery = Gallery(tmp_path)
    with pytest.raises(InvalidRequest, match="invalid id="):
        gallery.get(bad_id)
    with pytest.raises(InvalidRequest, match="invalid id="):
        gallery.delete(bad_id)


def with_ids(monkeypatch, *ids: str) -> None:
    """Make the gallery hand out these ids, in order (to build prefixes that collide)."""
    queue = iter(ids)
    monkeypatch.setattr("easel.storage.gallery.uuid.uuid4", lambda: types.SimpleNamespace(hex=next(queue)))


def test_a_unique_id_prefix_names_one_image(tmp_path, monkeypatch):
    gallery = Gallery(tmp_path)
    with_ids(monkeypatch, "abc1" + "0" * 28, "abc2" + "0" * 28, "f" * 32)
    first, second, third = (gallery.add_result(fake_result(seed=seed))[0] for seed in (1, 2, 3))
    assert gallery.resolve("abc1").id == first.id
    assert gallery.resolve("f").id == third.id
    assert gallery.resolve(second.id).id == second.id  # a whole id is its own prefix
    with pytest.raises(InvalidRequest, match="ambiguous") as ambiguous:
        gallery.resolve("abc")
    assert first.id in str(ambiguous.value) and second.id in str(ambiguous.value)
    with pytest.raises(InvalidRequest, match="no such image"):
        gallery.resolve("0")
    for bad in ("", "ABC", "abc%", "../x", "a" * 33, "abc1\n"):
        with pytest.raises(InvalidRequest, match="invalid id="):
            gallery.resolve(bad)


def test_gallery_list_and_show_in_the_cli(tmp_path, monkeypatch):
    gallery = Gallery(tmp_path / "home")
    with_ids(monkeypatch, "abc1" + "0" * 28, "abc2" + "0" * 28)
    first = gallery.add_result(fake_result("a red circle", seed=1))[0]
    gallery.add_result(fake_result("a blue square", seed=2))

    def easel(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EASEL_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "easel", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    listed = easel("gallery", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "CREATED", "(UTC)", "MODEL", "SEED", "KIND", "PROMPT"]
    assert len(rows) == 2 and first.id in listed.stdout
    shown = easel("gallery", "show", "abc1")
    assert shown.returncode == 0, shown.stderr
    assert f"id: {first.id}" in shown.stdout
    request_text = shown.stdout.split("request: ", 1)[1]
    assert json.loads(request_text)["prompt"] == "a red circle"  # JSON, not a Python dict
    ambiguous = easel("gallery", "show", "abc")
    assert ambiguous.returncode == 2
    assert "ambiguous" in ambiguous.stderr and first.id in ambiguous.stderr
    unknown = easel("gallery", "show", "0123")
    assert unknown.returncode == 2 and "no such image" in unknown.stderr


def test_concurrent_writers_lose_nothing(tmp_path):
    gallery = Gallery(tmp_path)
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(6):
                gallery.add_result(fake_result(f"worker {worker} image {i}", seed=worker * 100 + i))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = Gallery(tmp_path).list(limit=1000)
    assert len(entries) == 48
    assert len({e.id for e in entries}) == 48
    assert all(e.path.is_file() for e in entries)


def test_crash_between_file_and_row_is_repaired_on_reopen(tmp_path):
    gallery = Gallery(tmp_path)
    kept = gallery.add_result(fake_result("kept"))[0]
    orphan_file = gallery.add_result(fake_result("file written, row lost", seed=5))[0]
    lost_file = gallery.add_result(fake_result("row written, file lost", seed=6))[0]
    with sqlite3.connect(gallery.database) as connection:  # the crash: a row never inserted
        connection.execute("DELETE FROM images WHERE id = ?", (orphan_file.id,))
    lost_file.path.unlink()  # ... and a file removed before its row
    half_written = kept.path.with_name(f".{kept.id}.png.tmpx.part")
    half_written.write_bytes(b"\x89PNG half")

    reopened = Gallery(tmp_path)
    ids = {e.id for e in reopened.list()}
    assert ids == {kept.id, orphan_file.id}  # adopted from its own metadata; the lost row dropped
    assert reopened.get(orphan_file.id).prompt == "file written, row lost"
    assert reopened.get(orphan_file.id).seed == 5
    assert not half_written.exists()
    assert all(e.path.is_file() for e in reopened.list())


def test_init_images_are_stored_by_content(tmp_path):
    gallery = Gallery(tmp_path)
    init = Image.new("RGB", (16, 16), (1, 2, 3))
    plain = fake_result()
    request = plain.request.model_copy(update={"init_image": "/elsewhere/in.png", "strength": 0.5})
    result = dataclasses.replace(plain, init_image=init, request=request)
    first = gallery.add_result(result)[0]
    second = gallery.add_result(result)[0]
    stored = first.request["init_image"]
    assert stored == second.request["init_image"] and stored.startswith("easel-input:")
    assert len(list((gallery.root / "inputs").iterdir())) == 1
    assert read_metadata(first.path).document["request"]["init_image"] == stored
