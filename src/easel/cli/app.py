"""The `easel` command: a thin door over Easel.generate.

Every option maps to one GenerationRequest field or Settings field; the CLI adds only
presentation (progress bar, file names, --json) and the mapping of the error tree to exit
codes: 2 for bad input (one line naming the field and value), 1 for failures while
running (a short message; the traceback with --debug).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from easel.errors import EaselError, InvalidRequest, ModelNotFound, UnsupportedFeature

# Options several commands share, spelled once.
DeviceOption = Annotated[
    str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps (env EASEL_DEVICE).")
]
DtypeOption = Annotated[
    str | None, typer.Option(help="auto | float32 | float16 | bfloat16 (env EASEL_DTYPE).")
]
ThreadsOption = Annotated[int | None, typer.Option(help="CPU threads for torch (env EASEL_THREADS).")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show library logs and tracebacks.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class EaselCommand(TyperCommand):
    """A command whose help reads well at 80 columns.

    Why: this typer (0.2x, with its own copy of click) shows every option's type in the help
    table, `<bool>` for flags too, and writes a required argument as `{prompt}` in the usage
    line. A flag takes no value, so it shows no type (an empty metavar); an argument shows
    as its metavar (PROMPT), bracketed only when optional, as click does."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:  # --help is made here, not declared: hence not in __init__
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw if param.required else f"[{param.display_name_raw}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class EaselGroup(TyperGroup):
    """The `easel` group: its own --help shows no `<bool>` either (see EaselCommand)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
        return params


class EaselTyper(typer.Typer):
    """typer.Typer whose commands are EaselCommands unless a command names its own class."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or EaselCommand, **kwargs)


app = EaselTyper(
    cls=EaselGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Generate images locally with Hugging Face diffusers.",
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
INPUT_ERRORS = (InvalidRequest, ModelNotFound, UnsupportedFeature)


def exit_code_for(error: BaseException) -> int:
    """The one mapping of the error tree to exit codes."""
    return 2 if isinstance(error, INPUT_ERRORS) else 1


def run_door(action: Callable[[], T], *, debug: bool) -> T:
    """Run `action`; turn every failure into one line on stderr and the right exit code."""
    try:
        return action()
    except EaselError as error:
        if debug:
            import traceback

            traceback.print_exc()
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(exit_code_for(error)) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as error:  # an easel bug or an environment problem: short, honest
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(error).__name__}: {error} (rerun with --debug for details)", err=True
        )
        raise typer.Exit(1) from None


def quiet_libraries(debug: bool) -> None:
    """Hub/diffusers/transformers chatter is for debugging, not for every run.

    Set through the libraries' environment variables (read when they are first imported), so
    a run that fails before any model loads never pays for importing torch."""
    import os
    import warnings

    if debug:
        os.environ["EASEL_DEBUG"] = "1"  # and the engine keeps the libraries' loading notes too
        return

    warnings.filterwarnings("ignore", category=FutureWarning)
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class ProgressDisplay:
    """A rich progress bar on an interactive terminal; a no-op callback otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Callable[[Any], None] | None:
        if not self._enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self._bar.start()
        # until the first step reports, the engine is loading the model (the first time) and
        # encoding the prompts: say so rather than sit at "denoising 0/?"
        task = self._bar.add_task("loading", total=None)

        def on_progress(progress: Any) -> None:
            self._bar.update(task, description="denoising", completed=progress.step, total=progress.total)

        return on_progress

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
