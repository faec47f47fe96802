"""The `easel` command: thin doors over Easel.

Every option maps to one GenerationRequest or Settings field; the CLI adds only presentation
(progress bar, file names, --json) and the mapping of the error tree to exit codes: 2 for bad
input (one line naming the field and value), 1 for failures while running (a short message;
the traceback with --debug). Commands live in small modules that register on one Typer app;
importing this package imports no torch, so `easel --help` is instant.
"""

from easel.cli import generate, images, serve, tools, upscale  # noqa: F401 - they register their commands
from easel.cli.app import app, exit_code_for

__all__ = ["app", "exit_code_for", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
