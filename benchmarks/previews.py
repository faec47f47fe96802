"""What live previews cost: `python benchmarks/previews.py [--rounds 7] [--steps 20] [--every 5]`.

Runs the same request through one Easel with previews off and on (linear, every `every` steps),
alternating, `rounds` times each, on the bundled demo model (64x64) and on the tiny SD 1.5 test
model (64x64, built in a temporary HF cache, nothing downloaded). Each preview is also encoded
as PNG, as the server's job queue does. Reports the median and best run of each, their differences, and
the time spent inside the previewer plus the PNG encoding (measured directly, so it does not
depend on the noise of whole runs; on a shared machine the whole-run medians move by more than
the previews cost, the best runs less). Also times one TAESD decode of SD 1.5-sized latents (64x64,
a 512x512 picture) with a random AutoencoderTiny of TAESD's published architecture. The machine
is whatever runs it: note it with the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_HOME"] = str(Path(tmp) / "hf")
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch

        torch.set_num_threads(1)
        from easel import Easel, GenerationRequest, Settings
        from easel.previews import Previewer
        from easel.testing.tiny_models import install_tiny_sd15

        install_tiny_sd15(Path(tmp) / "hf", ("stable-diffusion-v1-5/stable-diffusion-v1-5",))
        engine = Easel(Settings(home=Path(tmp) / "home", threads=1))
        inside = [0.0]
        original = Previewer.__call__

        def timed(self, step, total, tensors):  # the previewer's own time
            started = time.perf_counter()
            image = original(self, step, total, tensors)
            inside[0] += time.perf_counter() - started
            return image

        def on_progress(progress) -> None:  # as the server's job queue: each preview to PNG
            if progress.preview is not None:
                started = time.perf_counter()
                progress.preview.save(io.BytesIO(), format="PNG", compress_level=1)
                inside[0] += time.perf_counter() - started

        Previewer.__call__ = timed  # type: ignore[method-assign]
        report = {}
        for name, model in (
            ("easel-demo", None),
            ("tiny SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ):
            request = GenerationRequest(
                model=model, prompt="a red circle on a blue background", steps=args.steps, seed=1,
                width=64, height=64,
            )  # fmt: skip
            engine.generate(request, on_progress, previews=args.every, preview_method="linear")  # load, fit
            times: dict[str, list[float]] = {"off": [], "on": []}
            inside[0] = 0.0
            for _ in range(args.rounds):
                for case in ("off", "on"):
                    started = time.perf_counter()
                    every = args.every if case == "on" else None
                    engine.generate(request, on_progress, previews=every, preview_method="linear")
                    times[case].append(time.perf_counter() - started)
            off, on = statistics.median(times["off"]), statistics.median(times["on"])
            best_off, best_on = min(times["off"]), min(times["on"])
            per_run = inside[0] / args.rounds
            report[name] = {
                "median_off_s": round(off, 4),
                "median_on_s": round(on, 4),
                "median_difference_pct": round(100 * (on - off) / off, 2),
                "best_off_s": round(best_off, 4),
                "best_on_s": round(best_on, 4),
                "best_difference_pct": round(100 * (best_on - best_off) / best_off, 2),
                "previewer_and_png_per_run_s": round(per_run, 5),
                "previewer_and_png_pct": round(100 * per_run / off, 2),
            }
        report["taesd_decode_64x64_latents_s"] = round(_taesd_decode_time(), 4)
        print(
            json.dumps({"steps": args.steps, "every": args.every, "rounds": args.rounds, **report}, indent=2)
        )


def _taesd_decode_time(repeats: int = 5) -> float:
    """Median time of one TAESD-sized decode (random weights, the published architecture)."""
    import torch
    from diffusers import AutoencoderTiny

    from easel.previews import TaesdDecoder

    decoder = TaesdDecoder(AutoencoderTiny().eval())
    latents = torch.randn(1, 4, 64, 64)
    decoder.image(latents)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        decoder.image(latents)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


if __name__ == "__main__":
    main()
