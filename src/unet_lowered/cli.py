"""The ``unet`` command: one thin sub-command per stage.

Each command parses its options and calls one library function. Heavy imports
(Keras, TensorFlow) happen inside the commands so that ``unet --help`` is fast.
User mistakes raise :class:`~unet_lowered.errors.UnetError`; :func:`main` prints
them on one line and exits with status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional: typer needs it on Python 3.10)

import typer

import unet_lowered
from unet_lowered.errors import UnetError

app = typer.Typer(
    name="unet",
    help=(
        "U-Net (Ronneberger et al. 2015) at 25% width on Keras 3: "
        "prepare data, train, evaluate, predict, plot."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unet-lowered {unet_lowered.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """U-Net (Ronneberger et al. 2015) at 25% width on Keras 3."""


# ---------------------------------------------------------------- data: prepare, check
# (commands for convert.py go here)


# ---------------------------------------------------------------- model: model-info, export
# (commands for model.py / export.py go here)


# ---------------------------------------------------------------- train, evaluate, plot
# (commands for train.py / evaluate.py / plots.py go here)


# ---------------------------------------------------------------- predict
# (commands for predict.py go here)


# ---------------------------------------------------------------- synth, demo
# (commands for synth.py / demo.py go here)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit status 1."""
    try:
        app(args=argv, prog_name="unet")
    except UnetError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["Path", "app", "main"]
