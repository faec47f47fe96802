"""The benchmark: easel against a plain diffusers call, in one process, alternating.

What it answers: does easel's machinery (request validation, model resolution, from_pipe
task pipelines, a fresh scheduler per request, metadata) cost anything measurable next to
calling diffusers directly, and do both make the same pixels? Rounds alternate between the
two after warm-up so drift (thermal, other load) hits both alike; medians are reported.
Timings belong here, in the benchmark's output, never in test assertions.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from easel.config import Settings
from easel.request import GenerationRequest


@dataclass
class BenchReport:
    """Everything one benchmark run measured (JSON-ready through as_dict)."""

    model: str
    device: str
    dtype: str
    threads: int
    steps: int
    size: str
    rounds: int
    easel_s: list[float] = field(default_factory=list)
    diffusers_s: list[float] = field(default_factory=list)
    images_equal: bool = False
    rss_mb: dict[str, float] = field(default_factory=dict)
    cuda_max_allocated_mb: float | None = None
    recompiles: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        easel, plain = statistics.median(self.easel_s), statistics.median(self.diffusers_s)
        return {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "steps": self.steps,
            "size": self.size,
            "rounds": self.rounds,
            "easel_median_s": round(easel, 4),
            "diffusers_median_s": round(plain, 4),
            "ratio_easel_over_diffusers": round(easel / plain, 4),
            "easel_steps_per_s": round(self.steps / easel, 2),
            "diffusers_steps_per_s": round(self.steps / plain, 2),
            "images_equal": self.images_equal,
            "rss_mb": {k: round(v, 1) for k, v in self.rss_mb.items()},
            "cuda_max_allocated_mb": self.cuda_max_allocated_mb,
            "recompiles": self.recompiles,
            **self.extras,
        }


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _settled_rss_mb() -> float:
    """RSS once garbage is collected and glibc has returned its free heap pages: without that,
    a few MB of allocator slack come and go between two reads, as large as a tiny model."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    library = ctypes.util.find_library("c")
    if library is not None:
        with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): plain RSS
            ctypes.CDLL(library).malloc_trim(0)
    return _rss_mb()


def run_benchmark(
    *,
    model: str | None,
    prompt: str = "a red circle on a blue background",
    steps: int = 20,
    width: int | None = None,
    height: int | None = None,
    rounds: int = 5,
    warmup: int = 1,
    seed: int = 0,
    settings: Settings | None = None,
    num_images: int = 1,
    build: Callable[[str, Any], Any] | None = None,
    reference_call: dict[str, Any] | None = None,
) -> BenchReport:
    """Time `rounds` alternating generations of `num_images` images through easel and through
    diffusers. With settings.channels_last / settings.compile, the plain pipeline gets diffusers'
    own recipe for the same (denoiser in channels_last, torch.compile(denoiser)), so both sides
    compare like for like; the warm-up rounds (where compilation happens) are reported apart.

    `build(device, dtype)`: `model` is a folder of configuration only (bench_architectures.
    InMemoryModel); the pipeline it builds goes into easel's cache in place of loading, and plain
    diffusers runs a pipeline of its own around the same modules. `reference_call`: how the model
    card calls diffusers, where it differs from `guidance_scale=` ({"guidance_argument":
    "true_cfg_scale", "negative_prompt": " "} for Qwen-Image)."""
    import numpy as np
    import torch
    from diffusers import AutoPipelineForText2Image

    from easel.engine import Easel
    from easel.models.optimizations import _denoiser_names

    settings = settings or Settings.from_env()
    engine = Easel(settings)
    rss = {"start": _rss_mb()}
    if build is not None:
        _adopt_built(engine, model, build)
    request = GenerationRequest(
        model=model, prompt=prompt, steps=steps, seed=seed, width=width, height=height, scheduler=None,
        num_images=num_images,
    )  # fmt: skip
    started = time.perf_counter()
    first = engine.generate(request)  # loads the model; also the warm-up's first round
    first_image_s = {"easel": time.perf_counter() - started}  # loading (and compiling) included
    concrete = first.request
    rss["easel_loaded"] = _rss_mb()
    (loaded,) = [entry for entry in engine.cache.loaded() if entry.source.display_name == first.model_name]
    device = str(loaded.pipeline.device)
    (denoiser,) = _denoiser_names(loaded.pipeline)  # unet, or transformer
    dtype = getattr(loaded.pipeline, denoiser).dtype
    location = loaded.source.location
    from easel.models.cache import no_loading_bars

    started = time.perf_counter()
    if build is not None:  # no weights on disk: a plain pipeline object around easel's modules
        plain = _plain_around(loaded.pipeline)
    else:
        with no_loading_bars():  # the reference's loading is not the user's to watch either
            plain = AutoPipelineForText2Image.from_pretrained(location, dtype=dtype).to(device)
    plain.set_progress_bar_config(disable=True)
    if settings.channels_last:
        getattr(plain, denoiser).to(memory_format=torch.channels_last)
    if settings.compile:
        compiled = torch.compile(
            getattr(plain, denoiser), mode=settings.compile_mode, fullgraph=settings.compile_fullgraph
        )
        setattr(plain, denoiser, compiled)
    plain_loading_s = time.perf_counter() - started
    call = dict(reference_call or {})
    guidance_argument = call.pop("guidance_argument", "guidance_scale")
    rss["both_loaded"] = _rss_mb()

    def run_easel() -> Any:
        return engine.generate(concrete).images

    def run_plain() -> Any:
        generator = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]
        return plain(
            prompt,
            num_inference_steps=steps,
            width=concrete.width,
            height=concrete.height,
            num_images_per_prompt=num_images,
            generator=generator,
            **{guidance_argument: concrete.guidance_scale},
            **call,
        ).images

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    compiled_before = _graph_count()
    warmup_s = {"easel": 0.0, "diffusers": 0.0}
    for _ in range(warmup):
        for side, run in (("easel", run_easel), ("diffusers", run_plain)):
            started = time.perf_counter()
            run()
            warmup_s[side] += time.perf_counter() - started
            if side == "diffusers" and "diffusers" not in first_image_s:
                first_image_s["diffusers"] = plain_loading_s + time.perf_counter() - started
    report = BenchReport(
        model=first.model_name,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        steps=steps,
        size=f"{concrete.width}x{concrete.height}",
        rounds=rounds,
    )
    if num_images != 1:
        report.extras["num_images"] = num_images
    if warmup:  # easel's first image came before: loading and compiling are in first_image_s
        report.extras["warmup_s"] = {side: round(value, 3) for side, value in warmup_s.items()}
        report.extras["first_image_s"] = {side: round(value, 3) for side, value in first_image_s.items()}
    ours = theirs = None
    for _ in range(rounds):
        started = time.perf_counter()
        ours = run_easel()
        report.easel_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        theirs = run_plain()
        report.diffusers_s.append(time.perf_counter() - started)
    ours, theirs = ours or [], theirs or []
    report.images_equal = len(ours) == len(theirs) and all(
        np.array_equal(np.asarray(mine), np.asarray(reference))
        for mine, reference in zip(ours, theirs, strict=False)
    )
    rss["end"] = _rss_mb()
    report.rss_mb = rss
    if device.startswith("cuda"):
        report.cuda_max_allocated_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if settings.compile:
        report.recompiles = _graph_count() - compiled_before
    return report


def _adopt_built(engine: Any, model: str | None, build: Callable[[str, Any], Any]) -> None:
    """Build `model`'s pipeline (a configuration-only folder) where and in what dtype the engine
    would load it, and put it in the engine's cache as loaded: the first generate finds it there."""
    from easel.models.cache import detect_family

    source = engine.resolve_model(model)
    family = detect_family(source)
    device, dtype = engine.device_and_dtype(family)  # the engine's own rule (family's GPU dtype)
    pipeline = build(device, dtype)
    options = engine.settings.performance
    engine.cache.adopt(source, family, pipeline, device=device, dtype=dtype, options=options)


def _plain_around(pipeline: Any) -> Any:
    """A plain diffusers pipeline of `pipeline`'s class around its modules (uncompiled: the caller
    compiles its own), with a scheduler of its own, so neither side's state reaches the other."""
    components = {name: getattr(module, "_orig_mod", module) for name, module in pipeline.components.items()}
    scheduler = components["scheduler"]
    components["scheduler"] = type(scheduler).from_config(scheduler.config)
    return type(pipeline)(**components)


def measure_task_switching(model: str | None, settings: Settings | None = None) -> dict[str, float]:
    """RSS growth while one base alternates between text-to-image and image-to-image: from_pipe
    must add no weights (growth as a fraction of the base's parameter bytes). One round of
    each runs first, so the allocator's working memory for both tasks is already counted;
    what is left is what switching itself costs."""
    import tempfile

    from easel.engine import Easel

    engine = Easel(settings or Settings.from_env())
    text2img = GenerationRequest(model=model, prompt="a red circle", steps=2, seed=0)
    first = engine.generate(text2img)
    (loaded,) = engine.cache.loaded()
    base_bytes = sum(
        p.numel() * p.element_size()
        for name in ("unet", "vae", "text_encoder")
        if getattr(loaded.pipeline, name, None) is not None
        for p in getattr(loaded.pipeline, name).parameters()
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "init.png")
        first.images[0].save(path)
        img2img = text2img.model_copy(update={"init_image": path, "strength": 0.5})
        engine.generate(img2img)
        before = _settled_rss_mb()
        for _ in range(3):
            engine.generate(text2img)
            engine.generate(img2img)
        growth_mb = _settled_rss_mb() - before
    return {
        "base_weights_mb": round(base_bytes / 2**20, 2),
        "rss_growth_over_3_switches_mb": round(growth_mb, 2),
        "growth_fraction_of_base": round(growth_mb * 2**20 / base_bytes, 4),
    }


def measure_cold_start(prompt: str = "a red circle on a blue background") -> dict[str, float]:
    """Wall time of `easel --help` and of a first image from the bundled model, each in a
    fresh process (what a user waits for)."""
    command = [sys.executable, "-m", "easel"]
    started = time.perf_counter()
    subprocess.run([*command, "--help"], check=True, capture_output=True)
    help_s = time.perf_counter() - started
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        subprocess.run(
            [
                *command,
                "generate",
                prompt,
                "--seed",
                "1",
                "--no-gallery",
                "-o",
                os.path.join(scratch, "x.png"),
            ],
            check=True,
            capture_output=True,
        )
        first_image_s = time.perf_counter() - started
    return {"help_s": round(help_s, 3), "cold_first_image_s": round(first_image_s, 3)}


def _graph_count() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except (ImportError, KeyError):
        return 0


def render_report(report: dict[str, Any]) -> str:
    """`easel bench`'s report as an aligned table for a terminal (--json gives the same data;
    its medians are per call, which makes `num_images` images)."""
    batch = int(report.get("num_images", 1))
    rows: list[tuple[str, str, str]] = [
        ("", "easel", "diffusers"),
        ("seconds per image (median)", f"{report['easel_median_s'] / batch:.3f}",
         f"{report['diffusers_median_s'] / batch:.3f}"),
        ("steps per second", f"{report['easel_steps_per_s']:.2f}", f"{report['diffusers_steps_per_s']:.2f}"),
    ]
    notes = [
        f"{report['model']} on {report['device']} ({report['dtype']}, {report['threads']} thread(s)), "
        f"{report['size']}, {report['steps']} steps, {report['rounds']} rounds",
        f"easel / diffusers: {report['ratio_easel_over_diffusers']:.3f}; images equal: "
        + ("yes" if report["images_equal"] else "NO"),
    ]
    if report.get("num_images", 1) != 1:
        notes.append(f"batch of {report['num_images']} images per call")
    if report.get("architecture"):
        counts = ", ".join(f"{key} {value / 1e6:.1f} M" for key, value in report["parameters"].items())
        flags = [flag for flag in ("channels_last", "compile") if report.get(flag)]
        notes.append(f"architecture {report['architecture']} with random weights ({counts})"
                     + (f"; {' + '.join(flags)}" if flags else ""))  # fmt: skip
    if report.get("first_image_s"):
        first = report["first_image_s"]
        notes.append(
            f"first image (loading and compiling included): easel {first['easel']:.2f} s, "
            f"diffusers {first['diffusers']:.2f} s"
        )
    rss = report.get("rss_mb") or {}
    if rss:
        readings = (f"{key.replace('_', ' ')} {value:.1f}" for key, value in rss.items())
        notes.append("memory (RSS MB): " + ", ".join(readings))
    if report.get("cuda_max_allocated_mb") is not None:
        notes.append(f"peak GPU memory: {report['cuda_max_allocated_mb']:.1f} MB")
    if report.get("recompiles") is not None:
        notes.append(f"torch.compile recompiles: {report['recompiles']}")
    switching = report.get("task_switching")
    if switching:
        notes.append(
            f"task switching: RSS +{switching['rss_growth_over_3_switches_mb']:.1f} MB over 3 switches "
            f"({switching['growth_fraction_of_base']:.0%} of the {switching['base_weights_mb']:.1f} MB base)"
        )
    cold = report.get("cold_start")
    if cold:
        notes.append(
            f"cold start: --help {cold['help_s']:.2f} s, first image {cold['cold_first_image_s']:.2f} s"
        )
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{label:<{width}}  {first:>10}  {second:>10}" for label, first, second in rows]
    return "\n".join([*lines, "", *notes])
