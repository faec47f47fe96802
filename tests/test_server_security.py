"""Safety: the key on every route, the bind rule, limits, URL images off, no secrets echoed."""

from __future__ import annotations

import base64
import io

import pytest
from conftest import TINY_SD15
from PIL import Image
from server_support import b64, routes, server

KEY = "k3y-for-tests-only"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def concrete(path: str) -> str:
    """A path template with its parameters filled (any well-formed id will do)."""
    return path.replace("{job_id}", "0" * 32).replace("{image_id}", "0" * 32)


def test_every_route_requires_the_key_except_health(engine, tmp_path):
    with server(tmp_path, engine, api_key=KEY) as client:
        served = routes(client.app)
        paths = {path for path, _ in served}
        assert {"/openapi.json", "/docs", "/redoc", "/sdapi/v1/txt2img", "/v1/images/edits"} <= paths
        assert len(served) >= 30
        for path, methods in served:
            for method in methods - {"HEAD"}:
                url = concrete(path)
                for headers in (
                    {},
                    {"Authorization": "Bearer wrong"},
                    basic("user", "wrong"),
                    basic(KEY, ""),
                ):
                    answer = client.request(method, url, headers=headers)
                    if path == "/health":
                        assert answer.status_code == 200
                        continue
                    assert answer.status_code == 401, (method, path, headers, answer.status_code)
                    assert answer.headers["x-should-retry"] == "false"
                    assert answer.headers["www-authenticate"].startswith("Basic")
                    assert KEY not in answer.text
        # an unknown path is refused the same way (the check is not per route)
        assert client.get("/not-a-route").status_code == 401
        # with the key, by Bearer (OpenAI clients) or Basic with any user name (webuiapi, browsers)
        for headers in ({"Authorization": f"Bearer {KEY}"}, basic("anyone", KEY), basic("", KEY)):
            assert client.get("/openapi.json", headers=headers).status_code == 200
            assert client.get("/docs", headers=headers).status_code == 200
            assert client.get("/sdapi/v1/options", headers=headers).status_code == 200
            assert client.get("/api/v1/jobs/" + "0" * 32, headers=headers).status_code == 404
        # the 401 has each flavour's shape
        assert client.post("/v1/images/generations").json()["error"]["type"] == "authentication_error"
        assert client.post("/sdapi/v1/txt2img").json()["error"] == "Unauthorized"
        assert client.get("/api/v1/models").json()["error"]["type"] == "Unauthorized"


def test_no_endpoint_echoes_the_key_or_paths(engine, tmp_path):
    with server(tmp_path, engine, api_key=KEY) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        done = client.post(
            "/api/v1/generate", json={"model": TINY_SD15, "prompt": "x", "steps": 1, "seed": 1}, headers=auth
        ).json()
        home = str(tmp_path)
        for url in (
            "/openapi.json",
            "/api/v1/models",
            "/api/v1/jobs",
            "/api/v1/gallery",
            "/sdapi/v1/options",
            "/sdapi/v1/sd-models",
            "/sdapi/v1/progress",
            f"/api/v1/images/{done['images'][0]['id']}/metadata",
        ):
            text = client.get(url, headers=auth).text
            assert KEY not in text and home not in text, url


def test_binding_beyond_loopback_needs_a_key_or_insecure():
    from easel import InvalidRequest
    from easel.server.security import check_bind

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, api_key=None, insecure=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(InvalidRequest, match="API key"):
            check_bind(host, api_key=None, insecure=False)
        check_bind(host, api_key="k", insecure=False)
        check_bind(host, api_key=None, insecure=True)


def test_serve_command_refuses_a_public_bind_without_a_key(tmp_path):
    from test_cli import run_easel

    done = run_easel("serve", "--host", "0.0.0.0", "--port", "9", home=tmp_path)
    assert done.returncode == 2
    assert "API key" in done.stderr and "--insecure" in done.stderr


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_limits_and_decompression_bombs_are_clear_4xx(engine, tmp_path, init_png):
    big = png_bytes(Image.effect_noise((200, 200), 64).convert("RGB"))  # ~100 KB of noise
    with server(tmp_path, engine, max_upload_bytes=50_000) as client:
        answer = client.post(
            "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [base64.b64encode(big).decode()]}
        )
        assert answer.status_code == 413 and answer.json()["field"] == "init_images"
        files = {"image": ("big.png", big, "image/png")}
        answer = client.post("/v1/images/edits", files=files, data={"prompt": "x"})
        assert answer.status_code in (413, 422) and answer.json()["error"]["param"] in ("image", "body")
        huge_body = b"{" + b" " * 2_000_000 + b"}"
        answer = client.post("/api/v1/jobs", content=huge_body, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and answer.headers["x-should-retry"] == "false"

    bomb = png_bytes(Image.new("1", (5000, 4000)))  # 20 megapixels in a few kilobytes
    assert len(bomb) < 50_000
    with server(tmp_path, engine) as client:
        answer = client.post(
            "/sdapi/v1/img2img", json={"prompt": "x", "init_images": [base64.b64encode(bomb).decode()]}
        )
        assert answer.status_code == 422 and "megapixel" in answer.json()["detail"]


def test_url_images_are_off_by_default_and_on_with_the_flag(engine, tmp_path, init_png):
    url = "http://127.0.0.1:9/nothing-listens-here.png"
    with server(tmp_path, engine) as client:
        answer = client.post("/api/v1/jobs", json={"prompt": "x", "init_image": url})
        assert answer.status_code == 422 and "--allow-url-images" in answer.json()["error"]["message"]
    with server(tmp_path, engine, allow_url_images=True) as client:
        answer = client.post(
            "/api/v1/generate", json={"model": TINY_SD15, "prompt": "x", "init_image": url, "steps": 2}
        )
        # accepted by the door; the engine then fails to download it: still a clear 4xx
        assert answer.status_code == 422 and "could not download" in answer.json()["error"]["message"]
        assert b64(init_png)  # (the data-URL path is covered in test_server_api)


def test_img2img_image_bytes_carry_no_server_path(engine, tmp_path, init_png):
    with server(tmp_path, engine) as client:
        body = {
            "prompt": "x",
            "init_images": [b64(init_png)],
            "steps": 2,
            "seed": 1,
            "override_settings": {"sd_model_checkpoint": TINY_SD15},
        }
        answer = client.post("/sdapi/v1/img2img", json=body).json()
        assert str(tmp_path).encode() not in base64.b64decode(answer["images"][0])


def test_one_access_line_per_request_without_keys_queries_or_bodies(engine, tmp_path, caplog):
    import logging

    secret_prompt = "a secret prompt nobody should log"
    with caplog.at_level(logging.INFO, logger="easel.access"), server(tmp_path, engine, api_key=KEY) as api:
        api.get("/health")
        api.get("/api/v1/models?key=" + KEY)  # no key header: refused, still logged
        api.post("/sdapi/v1/txt2img", json={"prompt": secret_prompt, "steps": 0}, headers=basic("u", KEY))
    lines = [record.getMessage() for record in caplog.records if record.name == "easel.access"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("GET /health 200 ") and lines[0].endswith(" ms")
    assert lines[1].startswith("GET /api/v1/models 401 ")
    assert lines[2].startswith("POST /sdapi/v1/txt2img 422 ")
    assert not any(KEY in line or secret_prompt in line or "?" in line for line in lines)
