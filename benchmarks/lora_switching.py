"""What switching LoRAs costs: `python benchmarks/lora_switching.py [--requests 20] [--steps 10]`.

Runs `requests` generations on the bundled demo model through one Easel (first with no adapter
loaded at all, then with adapters loaded but off), cycling through three
LoRAs (random ones written for the demo UNet and text encoder by easel.testing.tiny_loras, so
nothing is downloaded) and, as a baseline, the same number without a LoRA. Reports the first
load of each LoRA, the mean time of a request that switches to another LoRA against one
without LoRA, and checks that no base weight was reloaded or changed (the UNet's parameters are
the same tensor objects, with the same values, before and after).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    import torch
    from diffusers import StableDiffusionPipeline

    from easel import Easel, GenerationRequest, Settings
    from easel.demo import demo_model_path
    from easel.testing.tiny_loras import write_tiny_lora

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "loras"
        pipe = StableDiffusionPipeline.from_pretrained(demo_model_path())
        names = [f"lora{i}" for i in range(3)]
        for index, name in enumerate(names):
            write_tiny_lora(pipe, folder / f"{name}.safetensors", seed=index, scale=0.05)
        del pipe
        engine = Easel(Settings(home=Path(tmp) / "home", lora_dir=folder, threads=1))

        def run(loras: list[dict[str, object]]) -> float:
            request = GenerationRequest(
                prompt="a red circle on a blue background", steps=args.steps, seed=1, loras=loras
            )
            started = time.perf_counter()
            engine.generate(request)
            return time.perf_counter() - started

        run([])  # load the base
        pristine = [run([]) for _ in range(args.requests)]  # before any adapter exists
        loaded = engine.cache.loaded()[0]
        before = {name: (p, p.detach().clone()) for name, p in loaded.pipeline.unet.named_parameters()}
        first_loads = [run([{"name": name}]) for name in names]  # each LoRA's first use loads it
        plain = [run([]) for _ in range(args.requests)]
        switching = [run([{"name": names[i % 3]}]) for i in range(args.requests)]
        unchanged = all(
            (p is before[n.replace(".base_layer", "")][0])
            and torch.equal(p, before[n.replace(".base_layer", "")][1])
            for n, p in loaded.pipeline.unet.named_parameters()
            if "lora_" not in n
        )
        result = {
            "steps": args.steps,
            "requests": args.requests,
            "first_use_s": [round(t, 3) for t in first_loads],
            "mean_before_any_lora_s": round(statistics.mean(pristine), 4),
            "mean_without_lora_s": round(statistics.mean(plain), 4),
            "mean_switching_lora_s": round(statistics.mean(switching), 4),
            "cost_per_switch_s": round(statistics.mean(switching) - statistics.mean(plain), 4),
            "base_weights_unchanged_same_objects": unchanged,
            "adapters_loaded": len(loaded.state.get("lora_adapters", {})),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
