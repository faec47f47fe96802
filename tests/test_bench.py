"""The benchmark in its short CI mode: it runs, compares pixels, and reports what it measured."""

from __future__ import annotations

from conftest import TINY_SD15

from easel.bench import measure_task_switching, render_report, run_benchmark


def test_benchmark_short_mode_reports_equal_images(hf_home):
    report = run_benchmark(model=TINY_SD15, steps=2, rounds=2, warmup=0).as_dict()
    assert report["images_equal"] is True
    assert len({report["easel_median_s"], report["diffusers_median_s"]}) >= 1
    assert report["size"] == "64x64" and report["steps"] == 2 and report["device"] == "cpu"
    assert set(report["rss_mb"]) == {"start", "easel_loaded", "both_loaded", "end"}
    # what `easel bench` prints: a table, then one line per finding (no dict reprs)
    table = render_report(report)
    assert table.splitlines()[0].split() == ["easel", "diffusers"]
    assert f"{report['easel_median_s']:.3f}" in table.splitlines()[1] and "images equal: yes" in table
    assert "{" not in table


def test_switching_to_img2img_adds_no_copy_of_the_weights(hf_home):
    measured = measure_task_switching(TINY_SD15)
    # a second copy of the weights would grow RSS by at least the base's size
    assert measured["growth_fraction_of_base"] < 0.5
