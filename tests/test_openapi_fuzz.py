"""Fuzzing every operation of the OpenAPI document with schemathesis, in process.

Checks: no 5xx (not_a_server_error), only documented statuses (status_code_conformance),
bodies as documented (response_schema_conformance), and schema-violating requests refused
(negative_data_rejection). Positive and negative examples both.

The app gets small limits (2 steps, 64x64 pixels, 2 images, a short queue), which its
document states too, so a request the fuzzer gets accepted runs the bundled demo model
briefly. EASEL_FUZZ_EXAMPLES sets the examples per operation (default 100: about a minute on
two cores); a longer run (about 10 minutes), or the schemathesis CLI against `easel serve`
(all its phases: examples, coverage, fuzzing, stateful), see the README:

    EASEL_FUZZ_EXAMPLES=1000 pytest tests/test_openapi_fuzz.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis pulls in hypothesis)

EXAMPLES = int(os.environ.get("EASEL_FUZZ_EXAMPLES", "100"))
CHECKS = [
    getattr(schemathesis.checks, name)
    for name in ("not_a_server_error", "status_code_conformance", "response_schema_conformance",
                 "negative_data_rejection")
]  # fmt: skip

pytestmark = pytest.mark.slow  # run by .ci/run (python -m pytest -m slow), not the quick set


@pytest.fixture(scope="module")
def api_schema(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The document of an app with small limits, loaded from the app itself (in process)."""
    from easel import Settings
    from easel.server import create_app

    home: Path = tmp_path_factory.mktemp("fuzz-home")
    app = create_app(
        Settings.from_env(home=home, max_steps=2, max_pixels=64 * 64, max_images=2, queue_size=4),
        engine=engine,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_document_lists_each_flavours_error_bodies(api_schema: Any) -> None:
    """No FastAPI HTTPValidationError (a `detail` array no route sends); every route but the
    open /health may answer 401 (with a key) and 500, in its flavour's shape."""
    document = api_schema.raw_schema
    assert "HTTPValidationError" not in document["components"]["schemas"]
    bodies = {"/api/": "NativeError", "/sdapi/": "A1111Error", "/controlnet/": "A1111Error",
              "/v1/": "OpenAIError"}  # fmt: skip
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            statuses = operation["responses"]
            if path == "/health":
                assert set(statuses) == {"200"}
                continue
            body = next(name for prefix, name in bodies.items() if path.startswith(prefix))
            assert {"401", "500"} <= set(statuses), (method, path)
            for status, response in statuses.items():
                if status.startswith(("4", "5")):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{body}"}, (method, path, status)
    a1111 = document["components"]["schemas"]["A1111Error"]["properties"]
    assert a1111["detail"]["type"] == "string"
    txt2img = document["paths"]["/sdapi/v1/txt2img"]["post"]["responses"]
    assert {"400", "404", "409", "413", "422", "429"} <= set(txt2img)
    side = document["components"]["schemas"]["GenerationRequest"]["properties"]["width"]
    assert side["multipleOf"] == 8 and side["maximum"] == 512  # 64 x 64 pixels at most: 8 x 512
    job = document["paths"]["/api/v1/jobs/{job_id}"]["get"]["parameters"][0]["schema"]
    assert job["pattern"] == "^[0-9a-f]{32}$"


def test_every_operation(api_schema: Any, subtests: pytest.Subtests) -> None:
    """Each operation in turn (a subtest each), positive and negative examples mixed."""
    from hypothesis import strategies as st

    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        with subtests.test(operation.label):
            strategy = st.one_of(
                operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
            )

            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def fuzz(case: Any) -> None:
                case.call_and_validate(checks=CHECKS)

            fuzz()
