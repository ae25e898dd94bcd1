"""The `fpn` Typer application: global options and command registration."""

from __future__ import annotations

import signal
from typing import Any

import typer
from typer.core import TyperOption

from fpncli import __version__
from fpncli.cli import info
from fpncli.cli.common import state

# Typer 0.29's help shows a flag's type as "<bool>", which reads as if it took a value; a
# flag shows no type, as in click's and argparse's help. Other Typer releases have no such
# method (the H200 machine's did not: `fpn` failed to start there), so patch only where it is.
_display_type_rich = getattr(TyperOption, "display_type_rich", None)


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    assert _display_type_rich is not None  # installed only where the method exists
    return None if self.is_flag else _display_type_rich(self, ctx)


if _display_type_rich is not None:
    TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    name="fpn",
    help="Feature Pyramid Network (FPN) Faster R-CNN: train, evaluate, detect and inspect pyramid levels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fpncli {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.debug = debug


app.command("info", help=info.HELP, epilog=info.EPILOG)(info.info)
# Commands register here, one line each (see fpncli/cli/<command>.py).
from fpncli.cli import detect as detect_cli  # noqa: E402

app.command("detect", help=detect_cli.HELP, epilog=detect_cli.EPILOG)(detect_cli.detect)
from fpncli.cli import inspect_levels as inspect_levels_cli  # noqa: E402

app.command("inspect-levels", help=inspect_levels_cli.HELP, epilog=inspect_levels_cli.EPILOG)(
    inspect_levels_cli.inspect_levels
)
from fpncli.cli import eval as eval_cli  # noqa: E402

app.command("eval", help=eval_cli.HELP, epilog=eval_cli.EPILOG)(eval_cli.eval_coco)
from fpncli.cli import data as data_cli  # noqa: E402

app.add_typer(data_cli.app, name="data")
from fpncli.cli import train as train_cli  # noqa: E402

app.command("train", help=train_cli.HELP, epilog=train_cli.EPILOG)(train_cli.train)
from fpncli.cli import demo as demo_cli  # noqa: E402

app.command("demo", help=demo_cli.HELP, epilog=demo_cli.EPILOG)(demo_cli.demo)
from fpncli.cli import ablation as ablation_cli  # noqa: E402

app.command("ablation", help=ablation_cli.HELP, epilog=ablation_cli.EPILOG)(ablation_cli.ablation)
from fpncli.cli import export as export_cli  # noqa: E402

app.command("export", help=export_cli.HELP, epilog=export_cli.EPILOG)(export_cli.export)
from fpncli.cli import plot as plot_cli  # noqa: E402

app.command("plot", help=plot_cli.HELP, epilog=plot_cli.EPILOG)(plot_cli.plot)


def main() -> None:
    try:
        app()
    except SystemExit:
        # The run is over and its outputs written: a Ctrl-C or SIGTERM during the ~1 s of
        # interpreter teardown (torch, openvino) killed the process by that signal (status
        # -2 / -15, atexit noise) instead of ending with the run's own status.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
