"""`fpn data ...`: dataset tools. `fpn data synth` writes the synthetic shapes dataset,
`fpn data convert` turns Pascal VOC / YOLO / COCO folders into COCO or YOLO, `fpn data check`
reports what is wrong with a COCO dataset before training."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    JsonOption,
    MaxSizeOption,
    MinSizeOption,
    console,
    err_console,
    handle_errors,
)

app = typer.Typer(
    name="data",
    help="Dataset tools: synthetic data, conversion from Pascal VOC and YOLO, checks before training.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

SYNTH_HELP = (
    "Write a COCO-layout dataset of synthetic multi-scale shapes (4 classes, 8 px to most "
    "of the image, clutter): something to train on with no download."
)
SYNTH_EPILOG = (
    "Examples:\n\n"
    "  fpn data synth data/shapes                       # 800 train + 100 val images\n\n"
    "  fpn data synth data/shapes --train 2000 --val 200 --seed 1\n\n"
    "  fpn train --data data/shapes --preset tiny --out runs/shapes"
)


@app.command("synth", help=SYNTH_HELP, epilog=SYNTH_EPILOG)
@handle_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Dataset root to create (annotations/, train/, val/).")],
    train: Annotated[int, typer.Option(min=0, help="Training images.")] = 800,
    val: Annotated[int, typer.Option(min=0, help="Validation images.")] = 100,
    seed: Annotated[int, typer.Option(help="Every image is a pure function of (seed, split, index).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at OUT.")] = False,
    size: Annotated[
        list[str] | None,
        typer.Option(
            help="Image size WxH (repeat for a mix; default 256x256, 320x224, 224x320). Large "
            "canvases, e.g. 1024x768, hold small objects: the case for `fpn eval --slice`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from fpncli.data.synth import SIZES, synthesize
    from fpncli.errors import FpnError

    sizes: tuple[tuple[int, int], ...] = SIZES
    if size:
        try:
            sizes = tuple((int(w), int(h)) for w, h in (s.lower().split("x") for s in size))
        except ValueError:
            raise FpnError(f"--size: expected WxH in pixels, e.g. 1024x768 (got {', '.join(size)})") from None

    from fpncli.cli.display import make_progress

    with make_progress(console=console, transient=True) as bar:
        task = bar.add_task("drawing", total=train + val)
        summary = synthesize(
            out,
            train=train,
            val=val,
            seed=seed,
            overwrite=overwrite,
            sizes=sizes,
            progress=lambda split, done, total: bar.advance(task),
        )
    for split, info in summary["splits"].items():
        console.print(
            f"{split}: {info['images']} images, {info['objects']} objects "
            f"(small {info['small']}, medium {info['medium']}, large {info['large']}) "
            f"-> {esc(str(info['annotation_file']))}",
            highlight=False,
        )
    console.print(
        f"train on it: [bold]fpn train --data {esc(str(out))} --preset tiny --out runs/shapes[/]",
        highlight=False,
    )


CONVERT_HELP = (
    "Convert a Pascal VOC, YOLO (Ultralytics) or COCO dataset into COCO (ready for fpn train "
    "--data) or YOLO. Bad labels are skipped, one line each naming the file and line; the rest "
    "is converted and the exit code is 1."
)
CONVERT_EPILOG = (
    "Examples:\n\n"
    "  fpn data convert VOCdevkit/VOC2007 --from voc --to coco --out data/voc07\n\n"
    "  fpn data convert datasets/coco128 --from yolo --to coco --out data/coco128 --images copy\n\n"
    "  fpn data convert data/coco --from coco --to yolo --out data/coco-yolo\n\n"
    "  fpn train --data data/voc07 --out runs/voc07"
)


@app.command("convert", help=CONVERT_HELP, epilog=CONVERT_EPILOG)
@handle_errors
def convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="The dataset: a VOC folder (Annotations/, JPEGImages/), a YOLO folder or its "
            "data.yaml, or a COCO root (annotations/instances_<split>.json + <split>/)."
        ),
    ],
    fmt_from: Annotated[
        str, typer.Option("--from", help="Source format: voc, yolo or coco.", show_default=False)
    ],
    fmt_to: Annotated[str, typer.Option("--to", help="Output format: coco or yolo.", show_default=False)],
    out: Annotated[
        Path,
        typer.Option(help="Folder to write (must not be or overlap SRC).", show_default=False),
    ],
    images: Annotated[
        str, typer.Option(help="link: symbolic links to the source images; copy: copies.")
    ] = "link",
    difficult: Annotated[
        str,
        typer.Option(
            help="VOC difficult objects: iscrowd (ignored by training and COCO evaluation, as VOC's "
            "evaluation ignores them), keep (ordinary objects) or drop."
        ),
    ] = "iscrowd",
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class names in order, a,b,c or a file with one per line (VOC: default every name "
            "seen, sorted; YOLO: default data.yaml's names).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Convert into an OUT that holds an earlier conversion: its files are replaced, files "
            "the new one does not write stay (use a new OUT for a clean result)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    from fpncli.cli.data_report import print_convert
    from fpncli.data.convert import convert as run_convert
    from fpncli.data.convert import parse_classes

    names = parse_classes(classes)
    with _stage_progress(quiet=as_json) as progress:
        summary = run_convert(
            src,
            fmt_from.lower(),
            fmt_to.lower(),
            out,
            images=images,
            difficult=difficult,
            classes=names,
            overwrite=overwrite,
            progress=progress,
        )
    if as_json:
        import json

        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        print_convert(summary, console, err_console)
    if summary.problems:
        raise typer.Exit(1)


CHECK_HELP = (
    "Check a COCO dataset before training: images missing or unreadable, boxes outside the image "
    "or degenerate, duplicate ids, empty images, the class histogram and the box sizes with the "
    "FPN level each maps to. Exit code 1 when anything is wrong."
)
CHECK_EPILOG = (
    "Examples:\n\n"
    "  fpn data check data/voc07                     # every annotations/instances_*.json\n\n"
    "  fpn data check ann/instances_val.json --images val/ --json\n\n"
    "  fpn data check data/voc07 --min-size 512 --max-size 853   # levels at your input size"
)


@app.command("check", help=CHECK_HELP, epilog=CHECK_EPILOG)
@handle_errors
def check(
    target: Annotated[
        Path,
        typer.Argument(
            help="A COCO root (annotations/instances_<split>.json + <split>/) or one annotation file."
        ),
    ],
    images: Annotated[
        Path | None,
        typer.Option(
            help="The images folder, with an annotation file (default: ROOT/<split>/).", show_default=False
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Model configuration whose levels are used (default, tiny).")
    ] = "default",
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    no_images: Annotated[
        bool, typer.Option("--no-images", help="Check the JSON only; do not open the images.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    from fpncli.analysis.dataset_check import check_dataset
    from fpncli.analysis.inspect_levels import InspectOptions
    from fpncli.cli.data_report import print_check

    options = InspectOptions(preset=preset, min_size=min_size, max_size=max_size)
    with _stage_progress(quiet=as_json) as progress:
        report = check_dataset(target, images, options, read_images=not no_images, progress=progress)
    if as_json:
        import json

        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        print_check(report.to_json(), console)
    if not report.ok:
        raise typer.Exit(1)


@contextlib.contextmanager
def _stage_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress callback ``(stage, done, total)``: one bar per stage (none with ``quiet``)."""
    if quiet:
        yield None
        return
    from fpncli.cli.display import make_progress

    with make_progress(console=err_console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, unit="img")
            bar.update(tasks[stage], completed=done, total=total)

        yield update
