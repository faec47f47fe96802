"""/sdapi/v1/options is a store that survives a restart (applied keys checked first, the rest
stored and said to be unapplied), and A1111's informational routes answer truthfully."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_SD15
from server_support import server

from easel.server.a1111_options import FILE_NAME

SMALL = {"prompt": "a red circle", "steps": 2, "seed": 4, "width": 64, "height": 64}


def _field(response) -> str | None:
    body = response.json()
    return body.get("field") or (body.get("error") or {}).get("field")


def test_options_are_stored_applied_and_restored_after_a_restart(hf_home, engine, tmp_path):
    home = tmp_path / "home"
    sent = {"sd_model_checkpoint": TINY_SD15, "CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic",
            "show_progress_every_n_steps": 5, "ui_extra": {"nested": [1, "two"]}}  # fmt: skip
    with server(home, engine) as client:
        answer = client.post("/sdapi/v1/options", json=sent)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "applied": ["CLIP_stop_at_last_layers", "sd_model_checkpoint", "sd_vae"],  # sorted
            "not_applied": ["show_progress_every_n_steps", "ui_extra"],
        }
        options = client.get("/sdapi/v1/options").json()
        assert options["show_progress_every_n_steps"] == 5 and options["ui_extra"] == {"nested": [1, "two"]}
        assert options["sd_model_checkpoint"] == TINY_SD15 and options["CLIP_stop_at_last_layers"] == 2
        assert json.loads((home / FILE_NAME).read_text())["ui_extra"] == {"nested": [1, "two"]}

    with server(home, engine) as client:  # a restart: a new app on the same home
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == TINY_SD15 and options["CLIP_stop_at_last_layers"] == 2
        assert options["show_progress_every_n_steps"] == 5
        info = json.loads(client.post("/sdapi/v1/txt2img", json=SMALL).json()["info"])
        assert info["sd_model_name"] == "stable-diffusion-v1-5" and "Clip skip: 2" in info["infotexts"][0]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"CLIP_stop_at_last_layers": 99, "other": 1}, 422, "CLIP_stop_at_last_layers"),
        ({"sd_vae": "not/a-listed-vae", "other": 1}, 422, "sd_vae"),
        ({"sd_model_checkpoint": "/etc", "other": 1}, 422, "sd_model_checkpoint"),
        ({"sd_model_checkpoint": "nobody/nothing", "other": 1}, 404, None),
    ],
)
def test_a_bad_applied_value_is_refused_and_nothing_is_stored(hf_home, engine, tmp_path, body, status, field):
    with server(tmp_path / "home", engine) as client:
        answer = client.post("/sdapi/v1/options", json=body)
        assert answer.status_code == status, answer.text
        if field is not None:
            assert _field(answer) == field
        assert "other" not in client.get("/sdapi/v1/options").json()
        assert not (tmp_path / "home" / FILE_NAME).exists()


def test_a_stored_model_that_no_longer_resolves_does_not_stop_the_server(hf_home, engine, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / FILE_NAME).write_text(json.dumps({"sd_model_checkpoint": "nobody/gone", "kept": True}))
    with server(home, engine) as client:
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == "easel-demo" and options["kept"] is True


def test_override_settings_kept_afterwards_are_stored(hf_home, engine, tmp_path):
    home = tmp_path / "home"
    body = {**SMALL, "override_settings": {"sd_model_checkpoint": TINY_SD15, "CLIP_stop_at_last_layers": 2},
            "override_settings_restore_afterwards": False}  # fmt: skip
    with server(home, engine) as client:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    with server(home, engine) as client:
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == TINY_SD15 and options["CLIP_stop_at_last_layers"] == 2


def test_webuiapi_set_and_get_options_work(hf_home, engine, tmp_path):
    import webuiapi

    with server(tmp_path / "home", engine) as client:
        api = webuiapi.WebUIApi(host="testserver", port=80)
        api.session = client  # webuiapi's requests calls, answered by the app
        reply = api.set_options({"sd_model_checkpoint": TINY_SD15, "jpeg_quality": 80})
        assert reply == {"applied": ["sd_model_checkpoint"], "not_applied": ["jpeg_quality"]}
        assert api.get_options()["jpeg_quality"] == 80
        assert api.get_cmd_flags()["api"] is True
        assert api.get_prompt_styles() == []
        assert api.get_face_restorers() == [] and api.get_hypernetworks() == []


def test_informational_routes(hf_home, engine, tmp_path):
    with server(tmp_path / "home", engine) as client:
        flags = client.get("/sdapi/v1/cmd-flags").json()
        assert flags["api"] is True and flags["listen"] is False and flags["nowebui"] is False
        assert flags["opt_sdp_attention"] is True and flags["xformers"] is False
        memory = client.get("/sdapi/v1/memory").json()
        import psutil
        import torch

        assert memory["ram"]["total"] == psutil.virtual_memory().total
        assert 0 <= memory["ram"]["free"] <= memory["ram"]["total"]
        if torch.cuda.is_available():
            assert memory["cuda"]["system"]["total"] == torch.cuda.mem_get_info()[1]
        else:
            assert "error" in memory["cuda"]
        for route in ("face-restorers", "hypernetworks", "script-info", "prompt-styles"):
            assert client.get(f"/sdapi/v1/{route}").json() == [], route
        assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
        interrogate = client.post("/sdapi/v1/interrogate", json={"image": "x", "model": "clip"})
        assert interrogate.status_code == 422 and "interrogate" in interrogate.text
        model = {"override_settings": {"sd_model_checkpoint": TINY_SD15}}
        for body, field in (
            ({"restore_faces": True}, "restore_faces"),
            ({"script_name": "X/Y/Z plot"}, "script_name"),
        ):
            refused = client.post("/sdapi/v1/txt2img", json={**SMALL, **model, **body})
            assert refused.status_code == 422 and _field(refused) == field
        paths = client.get("/openapi.json").json()["paths"]
        for route in (
            "cmd-flags",
            "memory",
            "prompt-styles",
            "face-restorers",
            "hypernetworks",
            "script-info",
        ):
            assert "200" in paths[f"/sdapi/v1/{route}"]["get"]["responses"], route
