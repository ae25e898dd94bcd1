"""`fpn inspect-levels`: what each pyramid level sees in an image, and whether a dataset's
boxes fit the pyramid's anchors and levels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.cli.common import (
    DeviceOption,
    JsonOption,
    MaxSizeOption,
    MinSizeOption,
    ModelWeightsOption,
    console,
    err_console,
    handle_errors,
)
from fpncli.cli.params import ModelArgs, model_options
from fpncli.errors import FpnError

HELP = (
    "See what each pyramid level sees in one image (table, heat maps, detections by level), "
    "or check whether a COCO dataset's boxes fit the anchors and levels (--coco)."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn inspect-levels photo.jpg --weights coco --out levels/\n\n"
    "  fpn inspect-levels photo.jpg --weights runs/exp/best.pt --compare-bottom-up --out levels/\n\n"
    "  fpn inspect-levels photo.jpg --weights none --preset tiny --json\n\n"
    "  fpn inspect-levels photo.jpg --weights runs/pan/best.pt --out levels/   # an afp model: afp_levels.png\n\n"
    "  fpn inspect-levels photo.jpg --weights runs/aug/best.pt --out levels/   # augfpn: soft_levels.png\n\n"
    "  fpn inspect-levels photo.jpg --weights runs/drs/best.pt --out levels/   # an rfp model: rfp_steps.png\n\n"
    "  fpn inspect-levels --coco data/annotations.json --preset tiny --out fit/\n\n"
    "  fpn inspect-levels --coco data/annotations.json --anchor-sizes 16,32,64,128,256 --min-size 1024"
)


def _numbers(text: str | None, kind: type, option: str) -> tuple | None:
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise FpnError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise FpnError(f"{option}: expected positive numbers, got {text!r}")
    return values


def _show_step(event: dict) -> None:
    err_console.print(event["message"], style="dim", markup=False, highlight=False)


@handle_errors
@model_options
def inspect_levels(
    image: Annotated[
        Path | None, typer.Argument(help="Image to inspect (omit with --coco).", show_default=False)
    ] = None,
    coco: Annotated[
        Path | None,
        typer.Option(
            "--coco",
            help="COCO annotation file: check every box against the anchors and levels (no model needed).",
        ),
    ] = None,
    weights: ModelWeightsOption = "none",
    preset: Annotated[
        str, typer.Option(help="Named configuration (default, tiny) for --weights none.")
    ] = "default",
    backbone_weights: Annotated[
        str, typer.Option(help="imagenet, none or a ResNet file, with --weights none.")
    ] = "none",
    model: ModelArgs | None = None,
    num_classes: Annotated[int, typer.Option(help="Foreground classes for --weights none.")] = 80,
    device: DeviceOption = "auto",
    min_size: MinSizeOption = None,
    max_size: MaxSizeOption = None,
    score_thr: Annotated[float, typer.Option(help="Keep detections with at least this score.")] = 0.5,
    anchor_sizes: Annotated[
        str | None, typer.Option(help="Anchor sizes, one per RPN level, e.g. 16,32,64,128,256.")
    ] = None,
    aspect_ratios: Annotated[str | None, typer.Option(help="Anchor aspect ratios h/w, e.g. 0.5,1,2.")] = None,
    compare_bottom_up: Annotated[
        bool, typer.Option("--compare-bottom-up", help="Also draw C2..C5 next to the pyramid levels.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the pictures and the JSON report.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    if (image is None) == (coco is None):
        raise FpnError("give either an IMAGE or --coco ANNOTATIONS.json (exactly one)")
    sizes = _numbers(anchor_sizes, int, "--anchor-sizes")
    ratios = _numbers(aspect_ratios, float, "--aspect-ratios")
    from fpncli.analysis.inspect_levels import InspectOptions, run_anchor_fit, run_inspect_image

    assert model is not None  # model_options passes it
    model.refuse_with_weights(weights)
    options = InspectOptions(
        weights=weights,
        preset=preset,
        model=model.given,
        num_classes=num_classes,
        backbone_weights=backbone_weights,
        device=device,
        min_size=min_size,
        max_size=max_size,
        anchor_sizes=sizes,
        aspect_ratios=ratios,
        score_thr=score_thr,
        bottom_up=compare_bottom_up,
        out=out,
    )
    progress = None if as_json else _show_step
    if coco is not None:
        fit, written = run_anchor_fit(coco, options, progress)
        data = fit.to_json()
    else:
        assert image is not None  # exactly one of the two, checked above
        inspection, written = run_inspect_image(image, options, progress)
        data = inspection.to_json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if coco is not None:
        _print_dataset_tables(data)
    else:
        _print_image_table(data)
        if "afp" in data:
            _print_afp_table(data["afp"])
        if "soft" in data:
            _print_soft_table(data["soft"])
        if "rfp" in data:
            _print_rfp_table(data)
    if written:
        console.print(
            f"wrote {len(written)} files to [bold]{esc(str(out))}[/]: "
            + esc(", ".join(p.name for p in written))
        )
    elif coco is None:
        console.print(
            "[dim]add --out DIR for heat maps, the pyramid montage, detections by level and levels.json[/]"
        )


def _print_image_table(data: dict) -> None:
    from rich.table import Table

    def show(value) -> str:
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    h, w = data["image_size"]
    ih, iw = data["input_size"]
    table = Table(
        title=f"{data['image']} — {w}x{h} px, model input {iw}x{ih} (padded "
        f"{data['padded_size'][1]}x{data['padded_size'][0]})"
    )
    for column in ("level", "stride", "map", "ch", "anchor", "h/w", "anchors", "pre-NMS", "post-NMS", "dets"):
        table.add_column(column, justify="left" if column == "level" else "right")
    for lv in data["levels"]:
        table.add_row(
            lv["name"],
            str(lv["stride"]),
            f"{lv['size'][0]}x{lv['size'][1]}",
            str(lv["channels"]),
            ",".join(map(str, lv["anchor_sizes"])) or "-",
            ",".join(f"{r:g}" for r in lv["aspect_ratios"]) or "-",
            show(lv["anchors"]),
            show(lv["proposals_pre_nms"]),
            show(lv["proposals_post_nms"]),
            show(lv["detections"]),
        )
    console.print(table)
    console.print(
        "map: feature cells h x w; ch: channels; anchor: size(s) in input px; h/w: aspect ratios; "
        "pre-/post-NMS: RPN proposals from the level; dets: final detections on the level"
    )
    console.print(
        f"{len(data['detections'])} detections with score >= {data['score_thr']:g}; level by "
        f"k = floor(4 + log2(sqrt(wh)/224)) on the box in model-input pixels. weights: {esc(str(data['weights']))}"
    )


def _print_afp_table(afp: dict) -> None:
    """Per RoI level and object size: detections whose max fusion that level won, next to
    the detections Eqn. (1) would put there."""
    from rich.table import Table

    table = Table(title="Adaptive feature pooling: the level that won the max fusion vs Eqn. (1)")
    table.add_column("level")
    for size in afp["sizes"]:
        table.add_column(f"{size}\nAFP | Eq.1", justify="right")
    table.add_column("all\nAFP | Eq.1", justify="right")
    for level in afp["levels"]:
        won, eq = afp["won"][level], afp["equation"][level]
        cells = [f"{won[s]} | {eq[s]}" for s in afp["sizes"]]
        table.add_row(level, *cells, f"{sum(won.values())} | {sum(eq.values())}")
    console.print(table)
    console.print(
        f"AFP: the level whose per-level fc6 gave the maximum for most of the fused units (each "
        f"detection's box re-pooled from every level); Eq.1: floor(4 + log2(sqrt(wh)/224)). "
        f"Sizes: COCO area buckets in image pixels. {afp['agree']} of {afp['detections']} "
        f"detections agree.",
        highlight=False,
    )


def _print_soft_table(soft: dict) -> None:
    """Per RoI level and object size: detections whose soft RoI selection weighted that level
    most, next to the detections Eqn. (1) would put there, and the level's mean weight."""
    from rich.table import Table

    table = Table(title="Soft RoI selection: the level weighted most vs Eqn. (1)")
    table.add_column("level")
    for size in soft["sizes"]:
        table.add_column(f"{size}\nsoft | Eq.1", justify="right")
    table.add_column("all\nsoft | Eq.1", justify="right")
    table.add_column("mean\nweight", justify="right")
    for level in soft["levels"]:
        won, eq = soft["won"][level], soft["equation"][level]
        mean = soft["mean_weight"].get(level)
        cells = [f"{won[s]} | {eq[s]}" for s in soft["sizes"]]
        table.add_row(
            level, *cells, f"{sum(won.values())} | {sum(eq.values())}", "-" if mean is None else f"{mean:.3f}"
        )
    console.print(table)
    console.print(
        f"soft: the level whose attention weight (sigmoid, averaged over the 7x7 grid; levels are "
        f"weighted independently, not shares) is largest for the detection's box re-pooled from "
        f"every level; Eq.1: floor(4 + log2(sqrt(wh)/224)). Sizes: COCO area buckets in image "
        f"pixels. {soft['agree']} of {soft['detections']} detections agree.",
        highlight=False,
    )


def _print_rfp_table(data: dict) -> None:
    """Per level: mean |activation| of every pass, the gate's share of each recursive pass
    (mean, min-max over the image) and how far the output moved from the first pass."""
    from rich.table import Table

    rfp = data["rfp"]
    table = Table(title=f"Recursive Feature Pyramid: {rfp['steps']} steps")
    table.add_column("level")
    for k in range(rfp["steps"]):
        table.add_column(f"|pass {k + 1}|" + ("\n(FPN)" if k == 0 else ""), justify="right")
    for k in range(1, rfp["steps"]):
        table.add_column(f"gate step {k + 1}\nmean (min-max)", justify="right")
    table.add_column("|output|", justify="right")
    table.add_column("output vs\npass 1", justify="right")
    for level in rfp["levels"]:
        cells = [f"{p[level]:.3g}" for p in rfp["mean_abs_activation"]]
        cells += [
            f"{g[level]['mean']:.2f} ({g[level]['min']:.2f}-{g[level]['max']:.2f})" for g in rfp["gate"]
        ]
        cells.append(f"{rfp['output_mean_abs_activation'][level]:.3g}")
        cells.append(f"{100 * rfp['change_from_first_pass'][level]:.1f} %")
        table.add_row(level, *cells)
    console.print(table)
    console.print(
        "|pass k|: mean |activation| of the k-th bottom-up + FPN pass; gate: the share the recursive "
        "pass got in the fusion (out = g * pass + (1 - g) * previous; 0.5 everywhere at initialisation); "
        "output vs pass 1: mean |output - pass 1| / mean |pass 1| (0 % for an untrained model).",
        highlight=False,
    )


def _print_dataset_tables(data: dict) -> None:
    from rich.table import Table

    def pct(share) -> str:
        return "-" if share is None else f"{100 * share:.1f} %"

    cfg = data["config"]
    title = (
        f"{data['annotations']} — {data['boxes']:,} boxes in {data['images']:,} images; "
        f"input --min-size {cfg['min_size']} --max-size {cfg['max_size']}"
    )
    table = Table(title=title)
    for column in ("group", "anchor", "boxes", "IoU>=0.7", "IoU>=0.3", "IoU<0.3", "best here"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for lv in data["levels"]:
        table.add_row(
            f"{lv['name']} /{lv['stride']}",
            ", ".join(map(str, lv["anchor_sizes"])) or "-",
            f"{lv['boxes']:,}" if lv["assigned_by_equation"] else "-",
            pct(lv["share_positive"]),
            pct(lv["share_usable"]),
            pct(lv["share_none"]),
            f"{lv['best_anchor_boxes']:,}",
        )
    table.add_section()
    for b in data["buckets"]:
        table.add_row(
            b["name"],
            "",
            f"{b['boxes']:,}",
            pct(b["share_positive"]),
            pct(b["share_usable"]),
            pct(b["share_none"]),
            "",
        )
    table.add_section()
    o = data["overall"]
    table.add_row(
        "all",
        "",
        f"{o['boxes']:,}",
        pct(o["share_positive"]),
        pct(o["share_usable"]),
        pct(o["share_none"]),
        "",
    )
    console.print(table)
    console.print(
        "rows: levels (/stride), boxes grouped by Eqn. (1) on their size after resizing; COCO area "
        "buckets (< 32², < 96², larger, original pixels). IoU columns: share of boxes whose best "
        "anchor reaches it (0.7 positive, 0.3 usable). best here: boxes whose best anchor is on "
        "that level."
    )
    skipped = {k: v for k, v in data["skipped"].items() if v}
    if skipped:
        console.print("left out: " + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in skipped.items()))
    style = "green" if data["fits"] else "yellow"
    for line in data["verdict"]:
        console.print(f"[{style}]{esc(line)}[/]", highlight=False)
