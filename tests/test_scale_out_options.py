"""Scale-out options without a Ray cluster: what `easel serve --ray` refuses at the door, the
deployment it asks Ray for, and how a replay's stored inputs travel to a remote worker."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from easel import Settings
from easel.errors import InvalidRequest, UnsupportedFeature
from easel.request import GenerationRequest
from easel.server.ray_serve import ScaleOut, inline_stored_inputs, require_ray, routing_id, worker_settings


def test_fixed_workers_ask_for_replicas_and_resources() -> None:
    options = ScaleOut(workers=3, cpus_per_worker=0.5, memory_per_worker_gb=2).deployment_options(
        Settings(device="cpu")
    )
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0, "memory": 2 * 1024**3}
    assert options["max_ongoing_requests"] == 1  # one generation per GPU at a time


def test_autoscaling_and_gpus() -> None:
    scale = ScaleOut(min_workers=0, max_workers=4, gpus_per_worker=0.5)
    options = scale.deployment_options(Settings(device="cuda"))
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 1,
    }
    assert options["ray_actor_options"]["num_gpus"] == 0.5 and scale.most_workers == 4
    assert ScaleOut().deployment_options(Settings(device="cuda:1"))["ray_actor_options"]["num_gpus"] == 1.0


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"workers": 0}, "workers"),
        ({"min_workers": 1}, "min_workers"),
        ({"min_workers": 2, "max_workers": 1}, "max_workers"),
        ({"gpus_per_worker": -1}, "gpus_per_worker"),
        ({"cpus_per_worker": 0}, "cpus_per_worker"),
        ({"memory_per_worker_gb": 0}, "memory_per_worker_gb"),
    ],
)
def test_bad_scale_out_options_are_refused_by_name(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRequest, match=named) as caught:
        ScaleOut(**fields)  # type: ignore[arg-type]
    assert caught.value.field == named


def test_without_ray_the_refusal_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UnsupportedFeature, match=r"pip install 'easel\[ray\]'"):
        require_ray()


def test_cli_ray_without_ray_exits_2_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from easel.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["serve", "--ray"])
    assert result.exit_code == 2
    assert "pip install 'easel[ray]'" in result.output


def test_cli_scale_out_flags_need_ray() -> None:
    from easel.cli import app

    result = CliRunner().invoke(app, ["serve", "--max-workers", "3"])
    assert result.exit_code == 2 and "--max-workers needs --ray" in result.output


def test_default_serve_never_imports_ray() -> None:
    """`easel serve` without --ray stays one process: building the app imports no Ray."""
    import subprocess

    code = "import sys; from easel.server import create_app; create_app(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_workers_get_the_ingress_settings_but_not_its_key() -> None:
    values = worker_settings(Settings(api_key="secret", threads=1, device="cpu", home=Path("/srv/easel")))
    assert values["api_key"] is None and values["threads"] == 1 and values["home"] == "/srv/easel"
    assert Settings(**{**values, "home": Path(values["home"])}).device == "cpu"


def test_stored_inputs_travel_as_data(tmp_path: Path) -> None:
    from easel.storage.images import INPUT_SCHEME

    digest = "ab" * 32
    (tmp_path / f"{digest}.png").write_bytes(b"\x89PNG fake")
    request = GenerationRequest(prompt="x", init_image=f"{INPUT_SCHEME}{digest}.png", strength=0.5)
    fields = inline_stored_inputs(request, tmp_path)
    assert fields["init_image"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert (
        routing_id(request) == "easel-demo" and routing_id(request.model_copy(update={"model": "m"})) == "m"
    )
