"""`fpn ablation`: the paper's neck comparison (Tables 1 and 3), rerun on one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc

from fpncli.analysis.ablation import DEFAULT_ROWS, SURVEY_ROWS
from fpncli.cli.common import BackendOption, DeviceOption, console, err_console, handle_errors
from fpncli.cli.params import ModelArgs, neck_options

HELP = (
    f"Train every row (default {', '.join(DEFAULT_ROWS)}; also {', '.join(r for r in SURVEY_ROWS if r not in DEFAULT_ROWS)}: "
    "NECK+afp is that neck with PANet's adaptive feature pooling, NECK+soft with AugFPN's soft RoI selection; "
    "fpn+cs and fpn+rfa are FPN with one AugFPN part, augfpn+norfa / +nocs / +level AugFPN without one) "
    "on the same synthetic multi-scale data with the "
    "same budget and seed, then print one table in the paper's form: RPN proposal recall "
    "(AR100, AR1k, AR1k small/medium/large), detector AP (AP50, AP, APs, APm, APl), "
    "parameters and inference time per image."
)
EPILOG = (
    "Examples:\n\n"
    "  fpn ablation                                  # CPU default, about 20-30 min on 2 cores\n\n"
    "  fpn ablation --quick --necks fpn,c4           # a smoke run of a minute or two\n\n"
    "  fpn ablation --necks fpn,nasfpn,fpn+afp,panet+afp   # the neck survey's rows (NAS-FPN, AFP)\n\n"
    "  fpn ablation --necks fpn,fpn+cs,fpn+rfa,fpn+soft,augfpn   # AugFPN part by part\n\n"
    "  fpn ablation --necks fpn,rfp,sac,rfp+sac        # DetectoRS: RFP, SAC (= fpn+sac) and both\n\n"
    "  fpn ablation --budget 10 --device cuda        # 10x longer training and more data, on a GPU\n\n"
    "  fpn ablation --warm-start --necks c5,fpn@3,panet   # every ResNet from one pretrained start; fpn with 3 seeds\n\n"
    "  fpn ablation --out runs/ablation              # rerun: finished necks are reused\n\n"
    "Writes OUT/ablation.json and OUT/ablation.md; OUT/runs/<neck>/last.pt works with "
    "fpn detect / eval / inspect-levels. Ctrl-C (or SIGTERM) stops the row in training after its "
    "iteration; the same command resumes it."
)
QUICK_BUDGET = 0.02


@handle_errors
@neck_options
def ablation(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder (data/, runs/<neck>/, ablation.json, ablation.md)."),
    ] = Path("runs/ablation"),
    necks: Annotated[
        str,
        typer.Option(
            help="Comma-separated rows, in table order: a neck, or NECK+MOD[+MOD] with MOD afp or soft "
            "(--roi-pooling), level, norfa or nocs (AugFPN's parts off), sac (--sac); fpn+cs, fpn+rfa: FPN "
            "with one AugFPN part; sac: fpn+sac. ROW@N: that row with N seeds."
        ),
    ] = ",".join(DEFAULT_ROWS),
    budget: Annotated[
        float,
        typer.Option(
            help="Scales iterations and data; 1 = the CPU default (250 iterations of 4 images per neck)."
        ),
    ] = 1.0,
    quick: Annotated[bool, typer.Option("--quick", help=f"Smoke run: --budget {QUICK_BUDGET}.")] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of the data, initialisation and sampling, the same for every neck.")
    ] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seeds per row without @N: further seeds train with --seed+1, +2, ... on the same data; "
            "the table shows mean±std and which differences exceed the noise.",
        ),
    ] = 1,
    warm_start: Annotated[
        bool,
        typer.Option(
            "--warm-start",
            help="Pretrain the ResNet once (classifying crops of the training split's shapes) into "
            "OUT/warm_start.pt, or reuse it, and start every row's backbone from it.",
        ),
    ] = False,
    redo_warm_start: Annotated[
        bool,
        typer.Option(
            "--redo-warm-start",
            help="Make OUT/warm_start.pt again (implies --warm-start; retrains the rows).",
        ),
    ] = False,
    data: Annotated[
        Path | None, typer.Option(help="A COCO-layout dataset root instead of the synthetic shapes.")
    ] = None,
    device: DeviceOption = "auto",
    workers: Annotated[int, typer.Option(min=0, help="Data-loading processes during training.")] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's).")
    ] = None,
    model: ModelArgs | None = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Retrain every neck instead of reusing finished ones.")
    ] = False,
    backend: BackendOption = "auto",
    backbone_weights: Annotated[
        str,
        typer.Option(
            help="Every row's bottom-up ResNet starts from: none (from scratch), imagenet "
            "(torch hub cache) or a ResNet state dict file."
        ),
    ] = "none",
) -> None:
    import torch
    from rich import box
    from rich.table import Table

    from fpncli.analysis.ablation import claim_sentence, format_row, header, run_ablation
    from fpncli.analysis.ablation.machine import machine_sentence
    from fpncli.analysis.ablation.report import warm_start_sentence
    from fpncli.analysis.ablation.seeds import noise_sentence

    if threads:
        torch.set_num_threads(threads)
    names = [n.strip() for n in necks.split(",") if n.strip()]

    def report(event: dict) -> None:
        kind, neck = event.get("event"), event.get("neck")
        if kind == "data":
            err_console.print(
                f"drawing {event['train']} + {event['val']} synthetic images into {esc(str(event['root']))}"
            )
        elif kind == "neck_start":
            err_console.print(f"[bold]{neck}[/] seed {event['seed']} ({event['index'] + 1}/{event['total']})")
        elif kind == "warm_start":
            err_console.print(
                f"warm start: classifying {event['crops']} crops for {event['iters']} iterations "
                f"into {esc(str(event['path']))}"
            )
        elif kind == "warm_start_iter":
            err_console.print(
                f"  warm start iter {event['iter']}/{event['total_iterations']} loss {event['loss']:.3f}",
                highlight=False,
            )
        elif kind == "warm_start_done":
            err_console.print(
                f"warm start saved ({100 * event['val_accuracy']:.1f} % of validation crops right, "
                f"sha256 {event['sha256'][:16]})",
                highlight=False,
            )
        elif kind == "warm_start_reused":
            err_console.print(
                f"warm start: reusing {esc(str(event['path']))} (sha256 {event['sha256'][:16]}; "
                "--redo-warm-start makes it again)",
                highlight=False,
            )
        elif kind == "neck_resumed":
            err_console.print(f"  {neck}: resuming the interrupted run from {esc(str(event['checkpoint']))}")
        elif kind == "interrupted":
            err_console.print(
                f"[yellow]{neck} stopped at iteration {event['iteration']}/{event['total_iterations']} "
                f"(saved {esc(str(event['checkpoint']))}); run the same command again to resume it[/]"
            )
        elif kind == "start":
            err_console.print(
                f"  {neck}: training {event['total_iterations']} iterations of "
                f"{event['effective_batch']} images on {event['device']}"
                + (f", from iteration {event['start_iteration']}" if event.get("start_iteration") else "")
            )
        elif kind == "neck_cached":
            err_console.print(
                f"[bold]{neck}[/] seed {event['seed']}: reusing the finished run (--fresh retrains)"
            )
        elif kind == "iter":
            err_console.print(
                f"  {neck} iter {event['iter']}/{event['total_iterations']} "
                f"loss {event['loss']:.3f}  {event['time_per_iter']:.2f} s/iter",
                highlight=False,
            )
        elif kind == "measure":
            err_console.print(f"  {neck}: measuring {esc(str(event['what']))}")
        elif kind == "warning":
            err_console.print(f"  [yellow]warning:[/] {esc(str(event['message']))}")

    result = run_ablation(
        out,
        names,
        budget=QUICK_BUDGET if quick else budget,
        seed=seed,
        data=str(data) if data else None,
        device=device,
        workers=workers,
        neck_options=model.given if model is not None else None,
        fresh=fresh,
        progress=report,
        backend=backend,
        backbone_weights=backbone_weights,
        seeds=seeds,
        warm_start=warm_start,
        redo_warm_start=redo_warm_start,
    )
    s = result["settings"]
    # Thirteen columns: a light box and one space of padding keep it within 80 characters.
    table = Table(
        title=f"Neck ablation — budget {s['budget']:g}: {s['iters']} iterations x {s['batch_size']} "
        f"images per neck, {s['val_images']} val images, seed {s['seed']}",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        collapse_padding=True,
        pad_edge=False,
    )
    for i, column in enumerate(header()):
        table.add_column(
            column.replace(" ", "\n", 1),
            justify="left" if i == 0 else "right",
            no_wrap=True,
            min_width=len(column.split(" ")[0]) + 1,
        )
    for row in result["rows"]:
        table.add_row(*format_row(row))
    console.print(table)
    console.print(
        "AR/AP in percent; AR: RPN top-1000 proposals, class-agnostic. " + claim_sentence(result["claim"]),
        highlight=False,
    )
    console.print(noise_sentence(result["noise"]), highlight=False)
    console.print(warm_start_sentence(result["warm_start"], s), highlight=False)
    console.print("Machine: " + machine_sentence(result["environment"]) + ".", highlight=False)
    console.print(f"saved {esc(str(result['json']))} and {esc(str(result['markdown']))}", highlight=False)
