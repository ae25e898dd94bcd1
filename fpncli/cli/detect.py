"""`fpn detect`: boxes for images and folders, as JSON and annotated pictures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    JsonOption,
    WeightsOption,
    console,
    err_console,
    handle_errors,
)
from fpncli.cli.inference_params import inference_options
from fpncli.inference.settings import DETECT_SCORE_THR, InferenceArgs

HELP = (
    "Detect objects in images, videos, folders, glob patterns and streams; write predictions.json and "
    "annotated images and videos to --out."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn detect photo.jpg --weights coco --out out/\n\n"
    "  fpn detect photos/ --recursive --weights runs/exp/best.pt --out out/ --classes person,car\n\n"
    "  fpn detect 'shots/*.png' --weights coco --out out/ --no-draw --json --quiet > boxes.json\n\n"
    "  fpn detect val2017/ --weights coco --out out/ --score-thr 0.05 --no-draw "
    "--coco-results results.json --coco-annotations instances_val2017.json\n\n"
    "  fpn detect clip.mp4 rtsp://cam.local/live webcam:0 --weights coco --out out/ --vid-stride 2\n\n"
    "  fpn detect clip.mp4 --weights coco --out out/ --track --count-line 0,360,1280,360\n\n"
    "  fpn detect big_photo.jpg --weights coco --out out/ --slice 640 --slice-overlap 0.2 --tta flip\n\n"
    "Exit code 1 when any input could not be read (each is listed in predictions.json "
    '"errors"); 130 after Ctrl-C, with predictions.json valid for the images done.'
)


@handle_errors
@inference_options
def detect(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Image and video files, folders and glob patterns (quote them), stream URLs "
            "(rtsp://, http://, ...) and webcams (webcam:0).",
            show_default=False,
        ),
    ],
    weights: WeightsOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")] = False,
    inference: InferenceArgs | None = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(help="Only these classes: names or category ids, comma-separated or repeated."),
    ] = None,
    draw: Annotated[bool, typer.Option("--draw/--no-draw", help="Write annotated images.")] = True,
    coco_results: Annotated[
        Path | None, typer.Option(help="Also write detections in the COCO results format to this file.")
    ] = None,
    coco_annotations: Annotated[
        Path | None,
        typer.Option(
            help="COCO annotation file whose file_name -> id mapping gives --coco-results image ids "
            "(default: 1..N in input order)."
        ),
    ] = None,
    vid_stride: Annotated[int, typer.Option(help="Videos and streams: detect in every Nth frame.")] = 1,
    track: Annotated[
        bool,
        typer.Option(
            "--track",
            help="Videos and streams: follow each object across frames with one track id (ByteTrack "
            "unless --tracker; needs the optional extra track). ByteTrack and BoT-SORT also see the boxes "
            "scoring 0.1 up to --score-thr; only tracked boxes at or above it are reported.",
        ),
    ] = False,
    tracker: Annotated[
        str | None,
        typer.Option(
            help="The tracker of --track (implies it): bytetrack (default), botsort, ocsort or sort.",
            show_default=False,
        ),
    ] = None,
    count_line: Annotated[
        str | None,
        typer.Option(
            help="With --track: count the tracks crossing the line x1,y1,x2,y2 (frame pixels), "
            "by direction and class; drawn on the video.",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    as_json: JsonOption = False,
) -> None:
    import dataclasses
    import json

    from fpncli.errors import FpnError
    from fpncli.inference.detect import DetectOptions, run_detect

    if coco_annotations is not None and coco_results is None:
        raise FpnError("--coco-annotations only names image ids for --coco-results; add --coco-results FILE")
    assert inference is not None  # inference_options passes it
    given = dataclasses.asdict(inference)
    if given["score_thr"] is None:
        given["score_thr"] = DETECT_SCORE_THR
    options = DetectOptions(
        **given,
        weights=weights,
        out_dir=out,
        classes=classes,
        draw=draw,
        recursive=recursive,
        coco_results=coco_results,
        coco_annotations=coco_annotations,
        vid_stride=vid_stride,
        track=tracker if tracker is not None else ("bytetrack" if track else None),
        count_line=count_line,
    )
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 shows progress and the summary
    progress = None if quiet or not main else _progress()
    task = None

    def show(event: dict) -> None:
        nonlocal task
        if progress is None:
            return
        if event["event"] == "note":
            err_console.print(f"note: {esc(event['message'])}", highlight=False, soft_wrap=True)
        elif event["event"] == "start":
            videos = f" and [bold]{event['videos']}[/] video(s)/stream(s)" if event.get("videos") else ""
            err_console.print(
                f"[bold]{event['images']}[/] image(s){videos} on [bold]{event['device']}[/]; "
                f"weights: {esc(event['weights'])}; path: {esc(event['path'])}",
                highlight=False,
                soft_wrap=True,
            )
            progress.start()
            if event["images"] or not event.get("videos"):
                task = progress.add_task("detect", total=event["images"], failed=0, unit="img")
        elif event["event"] == "image" and task is not None:
            progress.update(task, advance=1, failed=event["summary"].images_failed)
        elif event["event"] == "video":
            # One bar per video, counting decoded frames (no total for a live stream).
            name = esc(Path(event["file"]).name if "://" not in event["file"] else event["file"])
            task = progress.add_task(name[:40], total=event["frames_total"], failed=0, unit="frame")
        elif event["event"] == "frame" and task is not None:
            progress.update(task, advance=1)

    try:
        summary = run_detect(sources, options, progress=show)
    finally:
        if progress is not None:
            progress.stop()
    if not main:
        return
    if as_json:
        typer.echo(json.dumps(summary.predictions, indent=2))
    if not quiet:
        _print_summary(summary)
    if summary.interrupted:
        if summary.predictions_written:
            err_console.print(
                f"interrupted: {esc(str(summary.predictions_path))} holds the "
                f"{summary.images_read + summary.images_failed} image(s)"
                + (f" and {summary.frames} video frame(s)" if summary.videos_total else "")
                + " done",
                style="yellow",
            )
        else:
            err_console.print(
                f"interrupted before the first image or frame: nothing written "
                f"({esc(str(summary.predictions_path))} is as it was)",
                style="yellow",
            )
        raise typer.Exit(130)
    if summary.images_failed or summary.videos_failed:
        raise typer.Exit(1)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        """Images (or video frames) per second over the run so far."""

        def render(self, task) -> Text:
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:.2f} {task.fields.get('unit', 'img')}/s", style="cyan")

    from fpncli.cli.display import make_progress

    return make_progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
    )


def _print_summary(summary) -> None:
    from rich.table import Table

    table = Table(title="fpn detect", show_header=False, title_justify="left")
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("images read", str(summary.images_read))
    table.add_row("images failed", f"[red]{summary.images_failed}[/]" if summary.images_failed else "0")
    if summary.videos_total:
        table.add_row("videos/streams", str(summary.videos_total))
        table.add_row("video frames detected", str(summary.frames))
        failed = summary.videos_failed
        table.add_row("videos failed", f"[red]{failed}[/]" if failed else "0")
    table.add_row("detections", str(summary.detections))
    tracked = [v["tracks"] for v in summary.predictions.get("videos", []) if "tracks" in v]
    if tracked:
        table.add_row("tracks", str(sum(map(len, tracked))))
    if summary.images_total or not summary.videos_total:
        table.add_row(
            "throughput",
            f"{summary.images_per_second:.2f} images/s ({summary.seconds:.1f} s, {summary.device})",
        )
    else:
        rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
        table.add_row("throughput", f"{rate:.2f} frames/s ({summary.seconds:.1f} s, {summary.device})")
    console.print(table)
    if summary.per_class:
        per_class = Table(title="detections per class", title_justify="left")
        per_class.add_column("class")
        per_class.add_column("detections", justify="right")
        for name, count in summary.per_class.most_common():
            per_class.add_row(esc(name), str(count))
        console.print(per_class)
    from fpncli.cli.track_tables import print_tracks

    print_tracks(console, summary.predictions.get("videos", []))
    for err in summary.errors:
        err_console.print(f"[red]failed:[/] {esc(err['error'])}", highlight=False, soft_wrap=True)
    if summary.coco_unmatched:
        err_console.print(
            f"[yellow]warning:[/] {len(summary.coco_unmatched)} image(s) are not in the "
            f"annotation file and are left out of the COCO results "
            f"(e.g. {esc(summary.coco_unmatched[0])})",
            highlight=False,
            soft_wrap=True,
        )
    if summary.renamed:
        natural, chosen = summary.renamed[0]
        err_console.print(
            f"note: {len(summary.renamed)} annotated cop{'y' if len(summary.renamed) == 1 else 'ies'} "
            f"renamed so as not to replace an input or a file fpncli did not write "
            f"(e.g. {esc(natural)} -> {esc(chosen)}); predictions.json names each one",
            highlight=False,
            soft_wrap=True,
        )
    if not summary.predictions_written:
        return  # stopped before the first image: the interruption line says nothing was written
    console.print(f"predictions: {summary.predictions_path}", highlight=False, markup=False)
    if summary.coco_results_path is not None:
        console.print(f"COCO results: {summary.coco_results_path}", highlight=False, markup=False)
