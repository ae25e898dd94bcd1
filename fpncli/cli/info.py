"""`fpn info`: the architecture as a table."""

from __future__ import annotations

from typing import Annotated

import typer

from fpncli.cli.common import (
    JsonOption,
    ModelWeightsOption,
    console,
    handle_errors,
)
from fpncli.cli.params import ModelArgs, model_options

HELP = "Show the model architecture: levels, strides, channels, anchors, parameters, weights."
EPILOG = (
    "Examples:\n\n"
    "  fpn info                      # the paper's R50-FPN\n\n"
    "  fpn info --preset tiny        # the small CPU configuration\n\n"
    "  fpn info --preset tiny --neck nasfpn --nasfpn-stacks 3\n\n"
    "  fpn info --neck panet --roi-pooling afp   # the full PANet\n\n"
    "  fpn info --preset tiny --neck augfpn --no-rfa   # AugFPN's parts, each on or off\n\n"
    "  fpn info --preset tiny --neck rfp --sac      # DetectoRS: RFP steps and SAC stages\n\n"
    "  fpn info --weights runs/exp/best.pt"
)


@handle_errors
@model_options
def info(
    weights: ModelWeightsOption = "none",
    preset: Annotated[
        str, typer.Option(help="Named configuration (default, tiny) for --weights none.")
    ] = "default",
    model: ModelArgs | None = None,
    num_classes: Annotated[int, typer.Option(help="Foreground classes for --weights none.")] = 80,
    as_json: JsonOption = False,
) -> None:
    import json

    from fpncli.analysis.describe import describe_weights

    assert model is not None  # model_options passes it
    model.refuse_with_weights(weights)
    summary = describe_weights(weights, preset=preset, num_classes=num_classes, model=model.given)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"FPN Faster R-CNN — {summary['backbone']} + {summary['neck']}")
    for column in (
        "level",
        "stride",
        "channels",
        "anchor sizes",
        "aspect ratios (h/w)",
        "anchors / cell",
        "used by",
    ):
        table.add_column(column, justify="right" if column not in ("level", "used by") else "left")
    for level in summary["levels"]:
        table.add_row(
            level["name"],
            str(level["stride"]),
            str(level["channels"]),
            ", ".join(map(str, level["anchor_sizes"])) or "-",
            ", ".join(f"{r:g}" for r in level["aspect_ratios"]) or "-",
            str(level["anchors_per_cell"] or "-"),
            " + ".join(level["used_by"]),
        )
    console.print(table)
    options = "".join(f", {k} {v}" for k, v in summary["neck_options"].items())
    console.print(
        f"neck: {summary['neck']}: {summary['neck_summary']}{options}; "
        f"reads {', '.join(summary['input_levels'])}",
        highlight=False,
    )
    if summary.get("rfp"):
        rfp = summary["rfp"]
        fed = ", ".join(f"ASPP({p}) -> {c}" for c, p in rfp["feedback"].items())
        console.print(
            f"RFP: {rfp['steps']} steps ({rfp['recursive_backbones']} recursive bottom-up pass(es), "
            f"weights {rfp['weights']}); fed back: {fed}; zero-initialised gate per level",
            highlight=False,
        )
    sac = summary.get("sac")
    console.print(
        "SAC: "
        + (
            f"{sac['layers']} 3x3 convs of {', '.join(sac['stages'])} switch between dilation 1 and 3"
            + (" (deformable)" if sac["deform"] else "")
            if sac
            else "none (plain 3x3 convolutions)"
        ),
        highlight=False,
    )
    eps = f" (eps {summary['frozen_bn_eps']:g})" if summary["frozen_bn_eps"] is not None else ""
    console.print(
        f"parameters: [bold]{summary['parameters']:,}[/] "
        f"({summary['trainable_parameters']:,} trainable)   norm: {summary['norm']}{eps}"
    )
    grid = {
        "stride": "every multiple of the level's stride",
        "torchvision": "torchvision's (padded image size // feature map size per level)",
    }[summary["anchor_grid"]]
    console.print(f"anchor grid: {summary['anchor_grid']}, {grid}")
    console.print(
        f"classes: {summary['num_classes']}   input: shorter side {summary['min_size']} px, "
        f"longer side at most {summary['max_size']} px"
    )
    console.print(
        "parameters by part: "
        + ", ".join(f"{name} {count:,}" for name, count in summary["parameters_by_part"].items()),
        highlight=False,
    )
    size = f"RoIAlign {summary['roi_output_size']}x{summary['roi_output_size']}"
    roi_levels = summary["roi_levels"]
    if summary["roi_pooling"] == "soft":
        console.print(
            f"RoI pooling: soft (AugFPN's soft RoI selection): {size} of every RoI from each of "
            f"{', '.join(roi_levels)}, weighted by learned per-level spatial attention and summed",
            highlight=False,
        )
    elif summary["roi_pooling"] == "afp":
        console.print(
            f"RoI pooling: afp (PANet's adaptive feature pooling): {size} of every RoI from each of "
            f"{', '.join(roi_levels)}, one fc6 per level, element-wise max, then the shared fc7",
            highlight=False,
        )
    else:
        console.print(
            f"RoI pooling: {size} from {', '.join(roi_levels)}, level k = floor(4 + log2(sqrt(wh)/224)) "
            f"clamped to [{roi_levels[0][1:]}, {roi_levels[-1][1:]}]",
            highlight=False,
        )
    aug = summary.get("augfpn")
    if aug is not None:
        aux = summary["training_only_parameters"].get("auxiliary box head")

        def on(flag: bool) -> str:
            return "on" if flag else "off"

        cs = on(aug["consistent_supervision"])
        if aug["consistent_supervision"]:
            cs += f" (training only: alpha {aug['cs_alpha']:g}, auxiliary box head {aux:,} parameters)"
        console.print(
            f"AugFPN parts: residual feature augmentation {on(aug['residual_feature_augmentation'])}, "
            f"soft RoI selection {on(aug['soft_roi_selection'])}, consistent supervision {cs}",
            highlight=False,
        )
    console.print(f"weights: {summary['weights']}", markup=False, highlight=False)
