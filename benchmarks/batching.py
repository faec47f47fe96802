"""Request batching throughput: images/s at 1, 2, 4 and 8 concurrent clients with batching off
(--max-batch 1) and on (--max-batch 8, --batch-window-ms 50), through the native API of an
in-process easel server (FastAPI TestClient, one worker); and how far the batched images are
from the same requests run alone (the unbatched rounds are the reference: same prompts, seeds).

    python benchmarks/batching.py [--requests 32] [--steps 20] [--concurrency 1 2 4 8]
    # on a GPU, the full-size SD 1.5 architecture with random weights (no downloads):
    python benchmarks/batching.py --architecture sd15 --device cuda --dtype float16 --size 512

Default: the bundled demo model at its native size (64x64) on the CPU, one torch thread, offline.
Off and on rounds alternate (--rounds each; the best counts). Each client posts its share of
the requests one after another (POST /api/v1/generate), so `concurrency` requests are in flight
at once; every request is one image, its own prompt and seed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROMPTS = ("a red circle on a blue background", "a green square on a yellow background",
           "a blue triangle on a white background", "a yellow star on a black background")  # fmt: skip


def measure(engine: Any, settings: Any, body: dict[str, Any], concurrency: int, requests: int,
            max_batch: int, window_ms: int) -> tuple[dict[str, Any], dict[int, Any]]:  # fmt: skip
    """One round: the row and each request's image (as an array) by seed."""
    import dataclasses

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from easel.server import create_app

    settings = dataclasses.replace(settings, max_batch=max_batch, batch_window_ms=window_ms,
                                   queue_size=requests + 8)  # fmt: skip
    app = create_app(settings, engine=engine)
    images: dict[int, Any] = {}
    batched: list[int] = []
    with TestClient(app) as client:
        warm = client.post("/api/v1/generate", json={**body, "prompt": "warm", "seed": 10**6})
        assert warm.status_code == 200, warm.text

        def client_loop(index: int) -> None:
            for seed in range(index, requests, concurrency):
                request = {**body, "prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed}
                answer = client.post("/api/v1/generate?include_images=true", json=request)
                assert answer.status_code == 200, answer.text
                record = answer.json()
                assert record["status"] == "succeeded", record
                png = base64.b64decode(record["images"][0]["b64_png"])
                images[seed] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
                batched.append(int(record["result"].get("batched", 1)))

        began, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(client_loop, range(concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    row = {
        "concurrency": concurrency,
        "max_batch": max_batch,
        "requests": requests,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(requests / elapsed, 3),
        "cpu_s": round(cpu, 3),  # this process's CPU time: steadier than wall time on a shared machine
        "images_per_cpu_s": round(requests / cpu, 3),
        "mean_batch": round(sum(batched) / len(batched), 2),
    }
    return row, images


@contextlib.contextmanager
def model_folder(architecture: str | None, device: str, dtype: str) -> Iterator[str | None]:
    """None (the bundled model), or a random-weights folder of the full-size architecture."""
    if architecture is None:
        yield None
        return
    import torch

    from easel.bench_architectures import random_weights_model

    torch_dtype = getattr(torch, dtype) if dtype != "auto" else None
    place = device if device != "auto" else "cpu"
    with random_weights_model(architecture, place, torch_dtype) as (folder, _):
        yield str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per round (one image each)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="width = height (default: the model's)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--max-batch", type=int, default=8, help="for the batched rounds")
    parser.add_argument("--window-ms", type=int, default=50)
    parser.add_argument("--architecture", choices=["sd15", "sdxl"], default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds per concurrency (best counts)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from easel import Easel, Settings

    rows = []
    with model_folder(args.architecture, args.device, args.dtype) as model:
        home = Path(tempfile.mkdtemp(prefix="easel-batching-bench-"))
        settings = Settings.from_env(home=home, threads=args.threads, device=args.device, dtype=args.dtype)
        engine = Easel(settings)
        body: dict[str, Any] = {"steps": args.steps, "model": model}
        if args.size:
            body.update(width=args.size, height=args.size)
        reference: dict[int, Any] = {}
        # off and on alternate, `rounds` times, and the best round counts: on a shared machine the
        # load drifts, and the best round is the least disturbed
        for concurrency in args.concurrency:
            for max_batch in [1, args.max_batch] * args.rounds:
                row, images = measure(engine, settings, body, concurrency, args.requests, max_batch,
                                      args.window_ms)  # fmt: skip
                if max_batch == 1:
                    reference.update(images)
                else:  # the same prompt and seed run alone (no batching) gave `reference`
                    seeds = [seed for seed in images if seed in reference]
                    differences = [np.abs(images[seed] - reference[seed]) for seed in seeds]
                    row["max_level_difference"] = int(max(d.max() for d in differences))
                    row["pixels_differing_pct"] = round(
                        100 * float(np.mean([(d > 0).any(axis=-1).mean() for d in differences])), 4
                    )
                    row["images_identical"] = sum(int(not d.any()) for d in differences)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| concurrent | off: images/s | on: images/s | speed-up | off: images/CPU-s | on: images/CPU-s "
          "| speed-up (CPU) | mean batch |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for concurrency in args.concurrency:
        same = [r for r in rows if r["concurrency"] == concurrency]
        off = max((r for r in same if r["max_batch"] == 1), key=lambda r: r["images_per_s"])
        on = max((r for r in same if r["max_batch"] != 1), key=lambda r: r["images_per_s"])
        ratio = on["images_per_s"] / off["images_per_s"]
        cpu_off = max(r["images_per_cpu_s"] for r in same if r["max_batch"] == 1)
        cpu_on = max(r["images_per_cpu_s"] for r in same if r["max_batch"] != 1)
        print(f"| {concurrency} | {off['images_per_s']:.2f} | {on['images_per_s']:.2f} | {ratio:.2f}x "
              f"| {cpu_off:.2f} | {cpu_on:.2f} | {cpu_on / cpu_off:.2f}x | {on['mean_batch']} |")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
