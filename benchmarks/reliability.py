"""Reliability of `easel serve`: a fuzzing soak and kill -9 rounds against the real process.

    python benchmarks/reliability.py soak --minutes 5 --clients 8
    python benchmarks/reliability.py kill --rounds 3

Each mode starts `python -m easel serve` itself, on a free loopback port with a temporary
EASEL_HOME (the bundled demo model, 64x64, a few steps, one torch thread, small limits:
SERVER_ENV), and ends with one summary line for the README.

soak: N client threads for M minutes mix native jobs (polled or streamed, some cancelled),
/api/v1/generate, /sdapi/v1/txt2img and /v1/images/generations with hostile input
(bad_inputs(): invalid JSON, wrong types, unknown fields, over-long and deeply nested prompts,
bad base64, unsupported image formats, unknown ids...; each sent at least once), randomly
mutated valid bodies (fuzzed()) and cheap GETs. It counts requests, distinct inputs, status
codes, queue-full 429s, hostile inputs wrongly accepted, latency and the server's RSS. Exit
status 1 if any answer was a 5xx, any request or job hung (no answer within its timeout),
the connection failed, the server died or a generated image did not decode.

kill: K rounds of: two short jobs that finish, one long job and three queued behind it,
kill -9 while the long one denoises, restart on the same EASEL_HOME, then check: the long
job is failed "interrupted by restart", the queued ones run and succeed, every job submitted
in any round is still found, every image of every finished job is served and decodes, every
gallery entry's file is served, no temporary file is left, no error in the server log since
the restart. Exit status 1 on any violation.

Only the standard library and httpx: PNGs are checked here (chunk CRCs, the pixel data's
size), not decoded with easel's own dependencies. tests/test_reliability.py runs one kill
round and a short soak through these functions.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "EASEL_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "EASEL_QUEUE_SIZE": "4",  # small: clients do fill it (429)
    "EASEL_MAX_STEPS": "100",  # the kill rounds' long job
    "EASEL_MAX_IMAGES": "2",
    "EASEL_MAX_PIXELS": str(128 * 128),
    "EASEL_MAX_UPLOAD_BYTES": str(256 * 1024),
}
FAST_TIMEOUT = 30.0  # s: any answer that does not wait for a generation
SLOW_TIMEOUT = 240.0  # s: synchronous generations and whole jobs (queue wait + model load included)
LOST = " lost (no record)"
TEMP_SUFFIX = ".part"  # easel.storage.files.TEMP_SUFFIX: what an interrupted atomic write leaves
PROMPTS = ("a red circle", "a blue square on grey", "(a cat:1.2) in the rain", "a++ tree, sunset", "")


# -- the server process --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`python -m easel serve` on `home` and one port (kept across restarts); its output is
    appended to home/server.log."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home, self.port = Path(home), port or free_port()
        self.log_path = self.home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for /health; returns the seconds it took."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EASEL_")}
        env.update(SERVER_ENV, EASEL_HOME=str(self.home))
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "easel", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited while starting:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError(f"the server did not answer /health in {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float | None:
        """VmRSS of the server process (Linux), in MB."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) / 1024 if found else None

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_tail(self, since: int = 0, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self, since: int = 0) -> list[str]:
        """Errors logged since byte `since`: ERROR lines, and each traceback as its innermost
        easel frame and its exception line."""
        found, frame, in_traceback = [], "", False
        for line in self.log_tail(since, lines=10**6).splitlines():
            if line.startswith("Traceback"):
                in_traceback, frame = True, ""
            elif in_traceback and line.startswith("  File ") and "/easel/" in line:
                frame = line.strip()
            elif in_traceback and not line.startswith(" "):
                in_traceback = False
                found.append(f"{line}  ({frame})" if frame else line)
            elif line.startswith("ERROR"):
                found.append(line)
        return found


@contextmanager
def running_server(home: Path | None = None) -> Iterator[Server]:
    """A started server on `home` (a temporary folder when None), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="easel-reliability-") as scratch:
        server = Server(Path(home) if home else Path(scratch))
        server.start()
        try:
            yield server
        finally:
            server.stop()


# -- checks ----------------------------------------------------------------------------------------


def png_problem(data: bytes) -> str | None:
    """None when `data` is a complete PNG (every chunk's CRC, IEND, pixel data of the size the
    header says); otherwise what is wrong."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "no PNG signature"
    position, pixels, header = 8, [], None
    while True:
        if position + 12 > len(data):
            return "truncated (no IEND)"
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        crc = data[position + 8 + length : position + 12 + length]
        if len(body) != length or len(crc) != 4:
            return f"truncated {kind!r} chunk"
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            return f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            pixels.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    if header is None:
        return "no IHDR"
    width, height, depth, color, _, _, interlace = header
    if interlace:
        return None  # the size check below is for non-interlaced images (what easel writes)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None:
        return f"unknown colour type {color}"
    try:
        raw = zlib.decompress(b"".join(pixels))
    except zlib.error as error:
        return f"pixel data does not inflate ({error})"
    if len(raw) != height * (1 + (width * channels * depth + 7) // 8):
        return "pixel data of the wrong size"
    return None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- inputs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One HTTP request to make; `bad`: hostile, it must be refused with a 4xx."""

    name: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    files: dict[str, tuple[str, bytes, str]] | None = None
    form: dict[str, str] | None = None
    bad: bool = False
    fuzzed: bool = False  # a mutated valid body (any answer but a 5xx will do)
    slow: bool = False  # may wait for a generation (the long timeout)


def as_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """A valid grey RGB PNG, made with zlib alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))  # fmt: skip


PNG = tiny_png()
UNSUPPORTED_IMAGES = {
    "EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto showpage\n%%EOF\n",
    "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>',
    "PDF": b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
    "truncated PNG": PNG[: len(PNG) // 2],
    "PNG header, huge size": PNG[:16] + struct.pack(">II", 100_000, 100_000) + PNG[24:],
    "text": b"hello, not an image",
}
NATIVE, GENERATE, TXT2IMG, IMG2IMG, OPENAI = (
    "/api/v1/jobs", "/api/v1/generate", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations",
)  # fmt: skip
WAITING = (GENERATE, TXT2IMG, IMG2IMG, OPENAI, "/v1/images/edits")  # doors that answer with images
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def bad_inputs() -> list[Probe]:
    """Hostile input for every door: each must be answered 4xx (except where `bad` is False:
    A1111 and OpenAI ignore unknown fields, as the originals do)."""
    probes: list[Probe] = []
    long_prompt = "a photo of a cat, " * 300  # 5400 characters
    nested = {"round": "(" * 300 + "cat" + ")" * 300, "square": "[" * 300 + "cat" + "]" * 300,
              "unclosed": "(" * 300 + "cat", "weighted": "(" * 50 + "cat:1.5" + ")" * 50}  # fmt: skip
    deep_json = b"[" * 100_000 + b"]" * 100_000
    for path in (NATIVE, GENERATE, TXT2IMG, IMG2IMG, OPENAI):
        probes += [
            Probe(f"invalid JSON {path}", "POST", path, b'{"prompt": "a cat",'),
            Probe(f"empty body {path}", "POST", path, b""),
            Probe(f"JSON array {path}", "POST", path, b"[1, 2, 3]"),
            Probe(f"JSON string {path}", "POST", path, b'"a cat"'),
            Probe(f"JSON null {path}", "POST", path, b"null"),
            Probe(f"not UTF-8 {path}", "POST", path, b'{"prompt": "\xff\xfe\xfd"}'),
            Probe(f"deep JSON {path}", "POST", path, deep_json),
            Probe(
                f"deep JSON in prompt {path}",
                "POST",
                path,
                b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            ),
            Probe(f"prompt is a number {path}", "POST", path, as_json({"prompt": 5})),
            Probe(f"too long prompt {path}", "POST", path, as_json({"prompt": long_prompt})),
            Probe(f"NUL and lone surrogate {path}", "POST", path, b'{"prompt": "a\\u0000\\ud800"}'),
            Probe(f"form body {path}", "POST", path, b"prompt=a+cat", "application/x-www-form-urlencoded"),
        ]
        for kind, prompt in nested.items():  # in a syntax where brackets nest (A1111's doors: always)
            syntax = "a1111" if kind == "square" else "compel"
            body = as_json({"prompt": prompt, "prompt_syntax": syntax})
            probes.append(Probe(f"nested prompt ({kind}, {syntax}) {path}", "POST", path, body))
    native = {
        "steps is text": {"steps": "many"}, "width is a list": {"width": [64]}, "seed is text": {"seed": "x"},
        "num_images is a float": {"num_images": 1.5}, "controls is text": {"controls": "x"},
        "init_image is a number": {"init_image": 12}, "unknown field": {"bogus": 1},
        "too wide": {"width": 4096, "height": 4096}, "width not a multiple of 8": {"width": 63},
        "too many steps": {"steps": 1000}, "too many images": {"num_images": 50},
        "negative steps": {"steps": -1}, "huge seed": {"seed": 2**80}, "negative seed": {"seed": -5},
        "NaN guidance": {"guidance_scale": float("nan")}, "inf strength": {"strength": float("inf")},
        "model is a path": {"model": "/etc/passwd"}, "model climbs": {"model": "../../secret"},
        "scheduler unknown": {"scheduler": "warp drive"},
        "syntax unknown": {"prompt_syntax": "klingon"},
        "bad base64": {"init_image": "data:image/png;base64,@@@"},
        "not a data URL": {"init_image": "not base64 at all!"},
        "image URL": {"init_image": "http://10.0.0.1/x.png"},
        "local image path": {"init_image": "/etc/hostname"},
        "refiner_at without refiner": {"refiner_at": 0.8},
        "control without image": {"controls": [{"model": "demo"}]},
        "control with bad image": {"controls": [{"model": "demo", "image": "data:image/png;base64,%%%"}]},
        "strength out of range": {"init_image": data_url(PNG), "strength": 7},
    }  # fmt: skip
    for kind, data in UNSUPPORTED_IMAGES.items():
        native[f"init image {kind}"] = {"init_image": data_url(data)}
        native[f"control image {kind}"] = {"controls": [{"model": "demo", "image": data_url(data)}]}
    for name, fields in native.items():
        for path in (NATIVE, GENERATE):
            body = as_json({"prompt": "a cat", "width": 64, "height": 64, "steps": 1, **fields})
            probes.append(Probe(f"{name} {path}", "POST", path, body))
    a1111 = {
        "steps is text": {"steps": "x"}, "cfg_scale is text": {"cfg_scale": "high"},
        "batch too large": {"batch_size": 100}, "too wide": {"width": 100_000},
        "sampler unknown": {"sampler_name": "nope"}, "NaN cfg_scale": {"cfg_scale": float("nan")},
        "NaN refiner_switch_at": {"refiner_switch_at": float("nan")},
        "inf refiner_switch_at": {"refiner_switch_at": float("inf")},
        "model is a path": {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}},
        "controlnet args not a list": {"alwayson_scripts": {"controlnet": {"args": "x"}}},
    }  # fmt: skip
    for name, fields in a1111.items():
        body = as_json({"prompt": "a cat", "width": 64, "height": 64, "steps": 1, **fields})
        probes.append(Probe(f"{name} {TXT2IMG}", "POST", TXT2IMG, body))
    init_images: dict[str, Any] = {"bad base64": ["@@@"], "no images": [], "images not a list": "x"}
    init_images.update({kind: [base64.b64encode(d).decode()] for kind, d in UNSUPPORTED_IMAGES.items()})
    for name, images in init_images.items():
        body = as_json({"prompt": "a cat", "steps": 1, "init_images": images, "denoising_strength": 0.5})
        probes.append(Probe(f"img2img {name}", "POST", IMG2IMG, body))
    for name, strength in {"denoising out of range": 3, "denoising NaN": float("nan")}.items():
        body = {"prompt": "a cat", "steps": 1, "init_images": [base64.b64encode(PNG).decode()]}
        probes.append(
            Probe(f"img2img {name}", "POST", IMG2IMG, as_json({**body, "denoising_strength": strength}))
        )
    unknown_model = as_json({"prompt": "a cat", "steps": 1, "model": "nobody/nothing-here"})
    probes.append(Probe(f"model unknown {GENERATE}", "POST", GENERATE, unknown_model))
    probes.append(Probe("img2img with a mask", "POST", IMG2IMG,
                        as_json({"prompt": "x", "init_images": [base64.b64encode(PNG).decode()],
                                 "mask": base64.b64encode(PNG).decode()})))  # fmt: skip
    openai = {
        "size malformed": {"size": "64x"}, "size too large": {"size": "4096x4096"}, "n zero": {"n": 0},
        "n too many": {"n": 64}, "format unknown": {"response_format": "gif"},
        "steps is text": {"steps": "x"}, "model is a path": {"model": "/etc/passwd"},
    }  # fmt: skip
    for name, fields in openai.items():
        body = as_json({"prompt": "a cat", "size": "64x64", "steps": 1, **fields})
        probes.append(Probe(f"{name} {OPENAI}", "POST", OPENAI, body))
    edits = "/v1/images/edits"
    form = {"prompt": "paint it", "size": "64x64", "steps": "1"}
    for kind, data in UNSUPPORTED_IMAGES.items():
        probes.append(
            Probe(f"edit {kind}", "POST", edits, None, None, {"image": ("x.png", data, "image/png")}, form)
        )
    probes += [
        Probe("edit without image", "POST", edits, None, None, None, form),
        Probe("edit as JSON", "POST", edits, as_json({"prompt": "x", "image": data_url(PNG)})),
        Probe(
            "edit broken multipart",
            "POST",
            edits,
            b'--x\r\nContent-Disposition: form-data; name="image"\r\n',
            "multipart/form-data; boundary=x",
        ),
        Probe(
            "edit with a mask",
            "POST",
            edits,
            None,
            None,
            {"image": ("x.png", PNG, "image/png"), "mask": ("m.png", PNG, "image/png")},
            form,
        ),
    ]
    for name, method, path in (
        ("unknown job", "GET", f"/api/v1/jobs/{UNKNOWN_ID}"),
        ("malformed job id", "GET", "/api/v1/jobs/not-an-id"),
        ("job id with dots", "GET", "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
        ("cancel unknown job", "POST", f"/api/v1/jobs/{UNKNOWN_ID}/cancel"),
        ("events of unknown job", "GET", f"/api/v1/jobs/{UNKNOWN_ID}/events"),
        ("unknown image", "GET", f"/api/v1/images/{UNKNOWN_ID}"),
        ("malformed image id", "GET", "/api/v1/images/xyz"),
        ("metadata of unknown image", "GET", f"/api/v1/images/{UNKNOWN_ID}/metadata"),
        ("delete unknown image", "DELETE", f"/api/v1/images/{UNKNOWN_ID}"),
        ("jobs limit negative", "GET", "/api/v1/jobs?limit=-1"),
        ("jobs limit text", "GET", "/api/v1/jobs?limit=many"),
        ("gallery limit huge", "GET", "/api/v1/gallery?limit=100000000000000000000"),
        ("model info of a path", "GET", "/api/v1/models/info?model=/etc/passwd"),
        ("wrong method", "PUT", NATIVE),
        ("unknown route", "GET", "/api/v1/nothing"),
    ):
        probes.append(Probe(name, method, path, None, None))
    for name, path, body in (
        ("png-info bad base64", "/api/v1/png-info", {"image": "@@@"}),
        ("png-info EPS", "/api/v1/png-info", {"image": data_url(UNSUPPORTED_IMAGES["EPS"])}),
        ("sdapi png-info text", "/sdapi/v1/png-info", {"image": "hello"}),
        ("tokens too long", "/api/v1/tokens", {"prompt": long_prompt}),
        ("preview EPS", "/api/v1/control/preview", {"image": data_url(UNSUPPORTED_IMAGES["EPS"]),
                                                    "preprocessor": "canny"}),
        ("preview truncated PNG", "/api/v1/control/preview",
         {"image": data_url(UNSUPPORTED_IMAGES["truncated PNG"]), "preprocessor": "canny"}),
        ("options unknown model", "/sdapi/v1/options", {"sd_model_checkpoint": "/etc/passwd"}),
    ):  # fmt: skip
        probes.append(Probe(name, "POST", path, as_json(body)))
    probes = [dataclasses.replace(probe, bad=True) for probe in probes]
    # Ignored by design, so not `bad`: A1111 and OpenAI clients send fields of their own versions.
    probes += [
        Probe(f"unknown field {TXT2IMG}", "POST", TXT2IMG,
              as_json({"prompt": "a cat", "width": 64, "height": 64, "steps": 1, "bogus": [1]})),
        Probe(f"unknown field {OPENAI}", "POST", OPENAI,
              as_json({"prompt": "a cat", "size": "64x64", "steps": 1, "bogus": {"a": 1}})),
        # a prompt box counts whatever it holds (the nesting limit applies when a job is submitted)
        Probe("tokens nested", "POST", "/api/v1/tokens", as_json({"prompt": nested["round"]})),
    ]  # fmt: skip
    # a door that waits for the images waits long if it (wrongly) accepts: that is counted, not a hang
    return [dataclasses.replace(probe, slow=probe.path in WAITING) for probe in probes]


FUZZ_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2, 3, 7, 8, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308,
    float("inf"), float("nan"), "", "x", "64x64", "Euler a", "DDIM", "a1111", "a" * 5000, "(" * 200,
    "\u0000", "\U0001f642" * 10, "data:image/png;base64,AAAA", data_url(PNG), [], [1], ["x"], {}, {"a": 1},
    [[[[]]]], [{"model": "demo"}],
)  # fmt: skip
FUZZ_FIELDS = {
    NATIVE: ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "num_images",
             "scheduler", "init_image", "strength", "model", "prompt_syntax", "controls", "refiner",
             "refiner_at", "safety_checker", "aesthetic_score"),
    TXT2IMG: ("prompt", "negative_prompt", "width", "height", "steps", "cfg_scale", "seed", "batch_size",
              "n_iter", "sampler_name", "scheduler", "override_settings", "alwayson_scripts",
              "refiner_checkpoint", "refiner_switch_at", "enable_hr"),
    OPENAI: ("prompt", "n", "size", "response_format", "model", "seed", "negative_prompt", "steps",
             "guidance_scale", "scheduler", "strength", "prompt_syntax", "quality", "style", "user"),
}  # fmt: skip


def valid_body(path: str, rng: random.Random) -> dict[str, Any]:
    prompt, seed, steps = rng.choice(PROMPTS), rng.randrange(10**6), rng.randint(1, 3)
    if path in (NATIVE, GENERATE):
        return {"prompt": prompt, "seed": seed, "steps": steps, "width": 64, "height": 64}
    if path == TXT2IMG:
        return {"prompt": prompt, "seed": seed, "steps": steps, "width": 64, "height": 64,
                "batch_size": rng.choice((1, 1, 2)),
                "sampler_name": rng.choice(("Euler a", "Euler", "DDIM"))}  # fmt: skip
    return {"prompt": prompt, "seed": seed, "steps": steps, "size": "64x64",
            "response_format": rng.choice(("b64_json", "url"))}  # fmt: skip


def fuzzed(rng: random.Random) -> Probe:
    """A valid body with one to three fields replaced, removed or added."""
    path = rng.choice((NATIVE, TXT2IMG, OPENAI))
    body = valid_body(path, rng)
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        if action < 0.15 and body:
            body.pop(rng.choice(list(body)))
        elif action < 0.25:
            body[f"unknown_{rng.randrange(100)}"] = rng.choice(FUZZ_VALUES)
        else:
            body[rng.choice(FUZZ_FIELDS[path])] = rng.choice(FUZZ_VALUES)
    return Probe(f"fuzzed {path}", "POST", path, as_json(body), fuzzed=True, slow=path != NATIVE)


INTERRUPT = Probe("interrupt", "POST", "/sdapi/v1/interrupt", None, None)
CHEAP_GETS = ("/health", "/api/v1/models", "/sdapi/v1/progress", "/api/v1/jobs?limit=5",
              "/api/v1/gallery?limit=5", "/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/api/v1/schedulers",
              "/sdapi/v1/options", "/api/v1/control")  # fmt: skip


# -- the soak ------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw; shared between client threads (lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    hostile: int = 0  # bad or fuzzed requests
    inputs: set[str] = field(default_factory=set)  # distinct (method, path, body)
    codes: Counter[int] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: {"fast": [], "generation": []})
    server_errors: list[str] = field(default_factory=list)  # every 5xx: the request and the answer
    hangs: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # connection failures, undecodable images
    accepted: Counter[str] = field(default_factory=Counter)  # bad probes answered 2xx
    images: int = 0
    jobs: Counter[str] = field(default_factory=Counter)  # final status of native jobs

    def add(self, probe: Probe, status: int, seconds: float) -> None:
        """An answer: its status, and how long it took (generations apart: they wait their turn)."""
        parts = [f"{probe.method} {probe.path} {probe.content_type} {probe.form}".encode(), probe.body or b""]
        parts += [name.encode() + data for name, data, _ in (probe.files or {}).values()]
        with self.lock:
            self.requests += 1
            self.inputs.add(hashlib.sha1(b"\0".join(parts)).hexdigest())
            self.hostile += probe.bad or probe.fuzzed
            self.codes[status] += 1
            generated = probe.slow and 200 <= status < 300
            self.latency["generation" if generated else "fast"].append(seconds)
            if probe.bad and 200 <= status < 300:
                self.accepted[probe.name] += 1
            if status >= 500:
                self.server_errors.append(problem_line(probe, f"HTTP {status}"))

    def failed(self, probe: Probe, kind: list[str], problem: str, *, sent: bool = True) -> None:
        """No answer (`kind` is self.hangs or self.broken), or something else wrong with one."""
        with self.lock:
            if not sent:
                self.requests += 1
            kind.append(problem_line(probe, problem))


def problem_line(probe: Probe, problem: str) -> str:
    return f"{problem}\n    request: {describe(probe)}"


def describe(probe: Probe) -> str:
    body = probe.body or b""
    shown = body[:240] + (b"... (%d bytes)" % len(body) if len(body) > 240 else b"")
    extra = f" files={ {k: (n, len(d)) for k, (n, d, _) in probe.files.items()} }" if probe.files else ""
    form = f" form={probe.form}" if probe.form else ""
    kind = f"content-type={probe.content_type}"
    return f"{probe.method} {probe.path} [{probe.name}] {kind} body={shown!r}{extra}{form}"


class Client:
    """One soak client: its own connection pool and random stream."""

    def __init__(self, server: Server, tally: Tally, seed: int) -> None:
        self.server, self.tally, self.rng = server, tally, random.Random(seed)
        self.http = httpx.Client(base_url=server.url, timeout=httpx.Timeout(FAST_TIMEOUT, connect=10))

    def close(self) -> None:
        self.http.close()

    def send(self, probe: Probe) -> httpx.Response | None:
        typed = probe.content_type and probe.body is not None
        headers = {"content-type": probe.content_type} if typed else {}
        timeout = SLOW_TIMEOUT if probe.slow else FAST_TIMEOUT
        started = time.perf_counter()
        try:
            answer = self.http.request(probe.method, probe.path, content=probe.body, headers=headers,
                                       files=probe.files, data=probe.form, timeout=timeout)  # fmt: skip
        except httpx.TimeoutException:
            self.tally.failed(probe, self.tally.hangs, f"hung: no answer within {timeout:g} s", sent=False)
            return None
        except httpx.HTTPError as error:
            self.tally.failed(probe, self.tally.broken, f"connection: {error!r}", sent=False)
            return None
        self.tally.add(probe, answer.status_code, time.perf_counter() - started)
        if answer.status_code >= 500:
            self.tally.server_errors[-1] += f"\n    answer: {answer.text[:400]}"
        if answer.status_code == 429:
            time.sleep(self.rng.uniform(0.05, 0.3))  # a polite client backs off a little
        elif 200 <= answer.status_code < 300 and probe.slow:
            self.count_images(answer, probe)
        return answer

    def count_images(self, answer: httpx.Response, probe: Probe) -> None:
        """Count the images of a generation's answer; those sent as base64 must be whole PNGs."""
        try:
            body = answer.json()
        except ValueError:
            return
        items = body.get("images") or []  # A1111: base64 strings; native: records (+ b64_png when asked)
        items += body.get("data") or []  # OpenAI: {b64_json} or {url}
        for item in items:
            data = item if isinstance(item, str) else item.get("b64_png") or item.get("b64_json")
            problem = data and png_problem(base64.b64decode(data))
            if problem:
                self.tally.failed(probe, self.tally.broken, f"an image in the answer: {problem}")
        with self.tally.lock:
            self.tally.images += len(items)

    def get(self, path: str) -> httpx.Response | None:
        return self.send(Probe(f"GET {path.split('?')[0]}", "GET", path, None, None))

    # -- operations --------------------------------------------------------------------------------

    def native_job(self, deadline: float) -> None:
        """Submit, maybe cancel, then poll (or stream the events) until it is finished."""
        probe = Probe("submit job", "POST", NATIVE, as_json(valid_body(NATIVE, self.rng)))
        answer = self.send(probe)
        if answer is None or answer.status_code != 202:
            return
        job_id = answer.json()["id"]
        if self.rng.random() < 0.25:
            time.sleep(self.rng.uniform(0, 0.5))
            self.send(Probe("cancel job", "POST", f"{NATIVE}/{job_id}/cancel", None, None))
        record = self.stream(job_id) if self.rng.random() < 0.2 else None
        while record is None or record["status"] in ("queued", "running"):
            if time.monotonic() > deadline + SLOW_TIMEOUT:
                self.tally.failed(probe, self.tally.hangs, f"hung: job {job_id} never finished")
                return
            time.sleep(0.2)
            polled = self.get(f"{NATIVE}/{job_id}")
            if polled is None or polled.status_code != 200:
                return
            record = polled.json()
        with self.tally.lock:
            self.tally.jobs[record["status"]] += 1
            self.tally.images += len(record["images"])
        for image in record["images"][:1]:
            fetched = self.get(image["url"])
            problem = fetched is not None and fetched.status_code == 200 and png_problem(fetched.content)
            if problem:
                self.tally.failed(Probe("job image", "GET", image["url"]), self.tally.broken, problem)
            if self.rng.random() < 0.3:
                self.get(f"{image['url']}/metadata")

    def stream(self, job_id: str) -> dict[str, Any] | None:
        """The job's server-sent events up to `end`; its record, or None (then it is polled)."""
        probe = Probe("job events", "GET", f"{NATIVE}/{job_id}/events", None, None, slow=True)
        started = time.perf_counter()
        try:
            with self.http.stream("GET", probe.path, timeout=SLOW_TIMEOUT) as answer:
                record, event = None, None
                for line in answer.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "end":
                        record = json.loads(line[6:])
        except httpx.TimeoutException:
            self.tally.failed(probe, self.tally.hangs, "hung: the event stream stalled", sent=False)
            return None
        except httpx.HTTPError as error:
            self.tally.failed(probe, self.tally.broken, f"connection: {error!r}", sent=False)
            return None
        self.tally.add(probe, answer.status_code, time.perf_counter() - started)
        return record

    def generation(self) -> None:
        path = self.rng.choice((GENERATE, GENERATE + "?include_images=true", TXT2IMG, OPENAI))
        body = valid_body(path.split("?")[0], self.rng)
        self.send(Probe(f"generate {path.split('?')[0]}", "POST", path, as_json(body), slow=True))

    def run(self, deadline: float, bad: list[Probe], share: list[Probe]) -> None:
        """First `share` (each hostile input is sent at least once by some client), then a
        random mix until the deadline."""
        for probe in share:
            if time.monotonic() >= deadline:
                return
            self.send(probe)
        operations: list[tuple[float, Callable[[], Any]]] = [
            (3, lambda: self.native_job(deadline)),
            (3, self.generation),
            (5, lambda: self.send(self.rng.choice(bad))),
            (4, lambda: self.send(fuzzed(self.rng))),
            (4, lambda: self.get(self.rng.choice(CHEAP_GETS))),
            (0.1, lambda: self.send(INTERRUPT)),
        ]
        weights = [weight for weight, _ in operations]
        while time.monotonic() < deadline:
            self.rng.choices(operations, weights)[0][1]()


@dataclass
class SoakReport:
    seconds: float
    clients: int
    tally: Tally
    rss_start: float | None
    rss_end: float | None
    rss_peak: float | None
    server_alive: bool
    log_errors: list[str]
    bad_kinds: int

    @property
    def ok(self) -> bool:
        t = self.tally
        return self.server_alive and not (t.server_errors or t.hangs or t.broken)

    def summary(self) -> str:
        t, codes = self.tally, self.tally.codes
        fast, slow = t.latency["fast"], t.latency["generation"]
        by_class = Counter(f"{code // 100}xx" for code in codes.elements())
        fives = sum(count for code, count in codes.items() if code >= 500)
        return (
            f"soak: {self.clients} clients x {self.seconds / 60:.1f} min: {t.requests} requests "
            f"({t.hostile} hostile or fuzzed, {len(t.inputs)} distinct inputs, "
            f"{self.bad_kinds} hostile kinds), {fives} 5xx, {len(t.hangs)} hangs, "
            f"{sum(t.accepted.values())} hostile accepted; "
            f"2xx {by_class['2xx']}, 4xx {by_class['4xx']} (429 queue full {codes[429]}); "
            f"{t.images} images; latency p50 {percentile(fast, 0.5) * 1000:.0f} ms "
            f"/ p99 {percentile(fast, 0.99) * 1000:.0f} ms (generations p50 {percentile(slow, 0.5):.1f} s "
            f"/ p99 {percentile(slow, 0.99):.1f} s); server RSS {self.rss_start or 0:.0f} -> "
            f"{self.rss_end or 0:.0f} MB (peak {self.rss_peak or 0:.0f})"
        )

    def details(self) -> str:
        t = self.tally
        lines = ["status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(t.codes.items()))]
        lines.append("native jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(t.jobs.items())))
        if t.accepted:
            lines.append("hostile inputs answered 2xx (should be 4xx): " + ", ".join(sorted(t.accepted)))
        for title, items in (("5xx", t.server_errors), ("hangs", t.hangs), ("broken", t.broken)):
            seen: Counter[str] = Counter(items)
            for item, count in seen.most_common(20):
                lines.append(f"{title} (x{count}): {item}")
        if not self.server_alive:
            lines.append("the server process died")
        lines += [f"server log: {line}" for line in self.log_errors[:40]]
        return "\n".join(lines)


def warm_up(server: Server) -> None:
    """One generation, so the model is loaded before anything is timed."""
    body = {"prompt": "warm up", "steps": 1, "width": 64, "height": 64, "seed": 1}
    answer = httpx.post(f"{server.url}{GENERATE}", json=body, timeout=SLOW_TIMEOUT)
    answer.raise_for_status()


def soak(server: Server, seconds: float, clients: int, seed: int = 0) -> SoakReport:
    """`clients` threads against `server` for `seconds`; the server should already be warm."""
    tally, bad = Tally(), bad_inputs()
    log_from = server.log_size()
    rss_start = server.rss_mb()
    peak = [rss_start or 0.0]
    deadline = time.monotonic() + seconds
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            peak[0] = max(peak[0], server.rss_mb() or 0.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers = [Client(server, tally, seed * 1000 + index) for index in range(clients)]
    threads = [
        threading.Thread(target=worker.run, args=(deadline, bad, bad[index::clients]))
        for index, worker in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        worker.close()
    stop.set()
    watcher.join()
    return SoakReport(seconds, clients, tally, rss_start, server.rss_mb(), peak[0], server.alive(),
                      server.log_errors(log_from), len(bad))  # fmt: skip


# -- kill -9 rounds ------------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every job submitted over all rounds and what it must be: succeeded or interrupted."""

    expected: dict[str, str] = field(default_factory=dict)
    images_checked: int = 0  # at the last restart: the images of every job so far
    gallery_checked: int = 0
    interrupted: int = 0
    resumed: int = 0


@dataclass
class RoundReport:
    number: int
    violations: list[str]
    killed_at: str
    restart_s: float
    jobs: int
    images: int
    gallery: int

    def summary(self) -> str:
        verdict = "ok" if not self.violations else f"{len(self.violations)} VIOLATIONS"
        return (f"round {self.number}: killed {self.killed_at}; restarted in {self.restart_s:.1f} s; "
                f"{self.jobs} jobs found, {self.images} job images and {self.gallery} gallery files decode: "
                f"{verdict}")  # fmt: skip


def submit(http: httpx.Client, steps: int, seed: int) -> str:
    body = {"prompt": "a red circle", "seed": seed, "steps": steps, "width": 64, "height": 64}
    answer = http.post(NATIVE, json=body)
    if answer.status_code != 202:
        raise RuntimeError(f"submit: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()["id"]


def record(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    answer = http.get(f"{NATIVE}/{job_id}")
    return answer.json() if answer.status_code == 200 else None


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def served_png(http: httpx.Client, url: str) -> str | None:
    """None when `url` answers 200 with a whole PNG; otherwise what is wrong."""
    answer = http.get(url)
    return f"HTTP {answer.status_code}" if answer.status_code != 200 else png_problem(answer.content)


def finished(http: httpx.Client, job_id: str, timeout: float = SLOW_TIMEOUT) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = record(http, job_id)
        return found if found and found["status"] not in ("queued", "running") else None

    return wait_until(done, timeout, f"job {job_id} to finish")


def kill_round(
    server: Server, ledger: Ledger, number: int, long_steps: int = 100, seed: int = 0
) -> RoundReport:
    """Jobs, kill -9 while one runs, restart on the same home, verify (see the module docstring)."""
    rng = random.Random(seed * 100 + number)
    violations: list[str] = []
    with httpx.Client(base_url=server.url, timeout=FAST_TIMEOUT) as http:
        for index in range(2):  # finished before the kill: their images must survive it
            job_id = submit(http, rng.randint(1, 3), rng.randrange(10**6))
            ledger.expected[job_id] = "succeeded"
            if finished(http, job_id)["status"] != "succeeded":
                violations.append(f"short job {index} before the kill did not succeed")
        long_id = submit(http, long_steps, rng.randrange(10**6))
        queued = [submit(http, rng.randint(1, 3), rng.randrange(10**6)) for _ in range(3)]
        ledger.expected[long_id] = "interrupted"
        ledger.expected.update(dict.fromkeys(queued, "succeeded"))

        target = rng.randint(1, max(1, long_steps // 4))  # kill within the first quarter of its steps

        def at_target() -> dict[str, Any] | None:
            found = record(http, long_id)
            if found is None or found["status"] == "queued":
                return None
            return found if found["status"] != "running" or found["progress"]["step"] >= target else None

        running = wait_until(at_target, SLOW_TIMEOUT, f"the long job to reach step {target}")
        states = [record(http, job_id) for job_id in queued]
        if any(state is None or state["status"] != "queued" for state in states):
            violations.append("not all three jobs were still queued at the kill (the long job was too short)")
    progress = running["progress"]
    killed_at = f"{running['status']} job at step {progress['step']}/{progress['total']}, 3 queued"
    server.kill9()
    log_from = server.log_size()
    restart_s = server.start()
    with httpx.Client(base_url=server.url, timeout=FAST_TIMEOUT) as http:
        long_record = record(http, long_id)
        message = ((long_record or {}).get("error") or {}).get("message", "")
        status = None if long_record is None else long_record["status"]
        if status != "failed" or "interrupted by restart" not in message:
            violations.append(f"running job {long_id}: {status} {message!r}, not 'interrupted by restart'")
        else:
            ledger.interrupted += 1
        for job_id in queued:
            try:
                status = finished(http, job_id)["status"]
            except TimeoutError as error:
                status = str(error)
            if status == "succeeded":
                ledger.resumed += 1
            else:
                violations.append(f"queued job {job_id} after the restart: {status}")
        images, records = 0, {}
        for job_id, expected in ledger.expected.items():
            records[job_id] = found = record(http, job_id)
            if found is None:
                violations.append(f"job {job_id}{LOST}")
                continue
            if expected == "succeeded" and found["status"] != "succeeded":
                violations.append(f"job {job_id}: {found['status']}, was expected to succeed")
            if expected == "interrupted" and found["status"] != "failed":
                violations.append(f"interrupted job {job_id}: {found['status']}, not failed")
            for image in found["images"]:
                problem = served_png(http, image["url"])
                images += 1
                if problem:
                    violations.append(f"image {image['id']} of job {job_id}: {problem}")
        gallery = http.get("/api/v1/gallery", params={"limit": 500})
        entries = gallery.json() if gallery.status_code == 200 else []
        if gallery.status_code != 200:
            violations.append(f"gallery list: HTTP {gallery.status_code}")
        for entry in entries:
            problem = served_png(http, entry["url"])
            if problem:
                violations.append(f"gallery entry {entry['id']}: file {problem}")
        listed = {entry["id"] for entry in entries}
        for job_id, found in records.items():
            missing = [
                image["id"] for image in (found or {"images": []})["images"] if image["id"] not in listed
            ]
            if missing and len(entries) < 500:
                violations.append(f"job {job_id}: images {missing} not in the gallery list")
    leftovers = [str(path) for path in (server.home / "gallery").rglob(f"*{TEMP_SUFFIX}")]
    if leftovers:
        violations.append(f"temporary files left after the restart: {leftovers}")
    violations += [f"server log: {line}" for line in server.log_errors(log_from)]
    ledger.images_checked, ledger.gallery_checked = images, len(entries)  # every round so far
    return RoundReport(number, violations, killed_at, restart_s, len(ledger.expected), images, len(entries))


def kill_summary(rounds: list[RoundReport], ledger: Ledger) -> str:
    violations = sum(len(report.violations) for report in rounds)
    restarts = [report.restart_s for report in rounds]
    lost = sum(1 for report in rounds for violation in report.violations if violation.endswith(LOST))
    return (
        f"kill -9: {len(rounds)} rounds, {len(ledger.expected)} jobs tracked: {ledger.interrupted} "
        f"running jobs reported failed 'interrupted by restart', {ledger.resumed} queued jobs resumed "
        "and succeeded, "
        f"{lost} records lost; after the last restart {ledger.images_checked} job images and "
        f"{ledger.gallery_checked} gallery files served and decoded, "
        f"restart {min(restarts, default=0):.1f}-{max(restarts, default=0):.1f} s; {violations} violations"
    )


# -- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    soaking = modes.add_parser("soak", help="concurrent clients, hostile and fuzzed input")
    soaking.add_argument("--minutes", type=float, default=5.0)
    soaking.add_argument("--clients", type=int, default=8)
    killing = modes.add_parser("kill", help="kill -9 the server with jobs running and queued")
    killing.add_argument("--rounds", type=int, default=3)
    killing.add_argument("--steps", type=int, default=100, help="steps of the job running at the kill")
    for mode in (soaking, killing):
        mode.add_argument("--seed", type=int, default=0)
        mode.add_argument("--home", type=Path, help="EASEL_HOME to use (default: a temporary folder)")
    args = parser.parse_args(argv)

    with running_server(args.home) as server:
        print(f"easel serve pid {server.pid} on {server.url}, EASEL_HOME {server.home}", flush=True)
        if args.mode == "soak":
            warm_up(server)
            report = soak(server, args.minutes * 60, args.clients, args.seed)
            print(report.details())
            print(report.summary())
            return 0 if report.ok else 1
        ledger, rounds = Ledger(), []
        for number in range(1, args.rounds + 1):
            report = kill_round(server, ledger, number, args.steps, args.seed)
            rounds.append(report)
            print(report.summary(), flush=True)
            for violation in report.violations:
                print(f"  VIOLATION: {violation}")
        print(kill_summary(rounds, ledger))
        return 0 if not any(report.violations for report in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
