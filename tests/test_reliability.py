"""benchmarks/reliability.py, small: one kill -9 round and a 20 s soak against a real
`easel serve` process (the bundled demo model: no HF cache needed). The full runs, whose
figures the README quotes, are `python benchmarks/reliability.py soak|kill`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # run by .ci/run (python -m pytest -m slow), not the quick set


def _load_harness():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"
    spec = importlib.util.spec_from_file_location("easel_reliability", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


reliability = _load_harness()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    with reliability.running_server(tmp_path_factory.mktemp("reliability-home")) as server:
        yield server


def test_png_check():
    assert reliability.png_problem(reliability.PNG) is None
    assert reliability.png_problem(reliability.PNG[:-5]) is not None
    corrupt = bytearray(reliability.PNG)
    corrupt[45] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert reliability.png_problem(bytes(corrupt)) is not None


def test_kill_9_round(live_server):
    ledger = reliability.Ledger()
    report = reliability.kill_round(live_server, ledger, 1)
    assert report.violations == [], "\n".join([report.summary(), *report.violations])
    assert (ledger.interrupted, ledger.resumed) == (1, 3)
    assert report.jobs == 6 and report.images >= 5 and live_server.alive()


def test_short_soak(live_server):
    reliability.warm_up(live_server)  # a no-op in effect when the kill round ran first
    report = reliability.soak(live_server, seconds=20, clients=4, seed=1)
    details = report.summary() + "\n" + report.details()
    assert report.tally.server_errors == [] and report.tally.hangs == [], details
    assert report.ok, details
    assert report.tally.requests > 50 and report.tally.hostile > 10, details
