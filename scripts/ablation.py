"""The FPN paper's neck ablation, rerun: the same as `fpn ablation` (see its --help).

    python scripts/ablation.py                      # CPU default (about 20-30 min on 2 cores)
    python scripts/ablation.py --quick --necks fpn,c4
    python scripts/ablation.py --budget 10 --device cuda

Prints the table and writes OUT/ablation.json and OUT/ablation.md (default OUT: runs/ablation).
"""

from __future__ import annotations

import typer

from fpncli.cli.ablation import EPILOG, HELP, ablation


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.command(help=HELP, epilog=EPILOG)(ablation)
    app()


if __name__ == "__main__":
    main()
