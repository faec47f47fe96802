"""The one exception tree of easel.

Every failure a user can see is one of these; third-party exceptions (diffusers,
transformers, huggingface_hub, PIL) are translated once, at the engine boundary, and each
door maps this tree to its own surface in one place (CLI exit codes, HTTP statuses)::

    EaselError
    ├── InvalidRequest        the request itself is wrong (field + value named)   CLI 2, HTTP 422
    ├── ModelNotFound         a model reference resolves to nothing              CLI 2, HTTP 404
    ├── UnsupportedFeature    valid, but this model/device cannot do it          CLI 2, HTTP 422
    ├── GenerationFailed      the pipeline failed while running                  CLI 1, HTTP 500
    └── Cancelled             the caller asked to stop                           CLI 1, HTTP 409
"""

from __future__ import annotations


class EaselError(Exception):
    """Base of every error easel raises on purpose."""


class InvalidRequest(EaselError):
    """A request field has a value easel cannot use; `field` and `value` say which."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ModelNotFound(EaselError):
    """A model reference points at nothing; the message says where easel looked."""


class UnsupportedFeature(EaselError):
    """The request is well formed but the model, family or device cannot serve it."""


class GenerationFailed(EaselError):
    """The pipeline failed while running (out of memory, non-finite output, ...)."""


class Cancelled(EaselError):
    """The caller cancelled the generation; no partial result is returned."""
