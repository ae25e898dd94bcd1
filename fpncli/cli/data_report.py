"""The tables of `fpn data convert` and `fpn data check` (rich), from their results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from fpncli.data.convert import ConvertSummary

# Problem lines printed before "... and N more" (all of them are in the problems file).
SHOWN_PROBLEMS = 20
BAR = 30  # characters of the longest histogram bar


def print_convert(summary: ConvertSummary, console: Console, err_console: Console) -> None:
    """Problems (one line each) on stderr, then the splits written and what was counted."""
    for line in summary.problems[:SHOWN_PROBLEMS]:
        err_console.print(f"[yellow]problem:[/] {esc(line)}", highlight=False, soft_wrap=True)
    if len(summary.problems) > SHOWN_PROBLEMS:
        err_console.print(
            f"[yellow]... and {len(summary.problems) - SHOWN_PROBLEMS} more problems[/]", highlight=False
        )
    table = Table(title=f"{summary.fmt_from} -> {summary.fmt_to}: {esc(str(summary.out))}")
    crowd = "crowd (kept as iscrowd)" if summary.fmt_to == "coco" else "crowd (left out)"
    for column in ("split", "images", "boxes", crowd, "written"):
        table.add_column(column, justify="left" if column in ("split", "written") else "right")
    for split, row in summary.splits.items():
        table.add_row(split, f"{row['images']:,}", f"{row['boxes']:,}", f"{row['crowd']:,}", esc(row["file"]))
    console.print(table)
    console.print(
        f"{len(summary.names)} classes: {esc(', '.join(summary.names[:12]))}"
        + (" ..." if len(summary.names) > 12 else ""),
        highlight=False,
    )
    for what, n in summary.notes.items():
        console.print(f"{n:,} {esc(what)}", highlight=False)
    if summary.problems:
        err_console.print(
            f"[bold yellow]{len(summary.problems)} problem(s)[/]: those boxes or images were skipped, "
            f"everything else converted; the list is in {esc(str(summary.problems_file))}",
            highlight=False,
            soft_wrap=True,
        )
    if not any(row["images"] for row in summary.splits.values()):
        # No success wording and no "train on it" for an output that holds nothing.
        err_console.print(
            f"[bold red]nothing was converted[/] from {esc(str(summary.source))}", highlight=False
        )
    elif summary.fmt_to == "coco":
        console.print(f"train on it: [bold]fpn train --data {esc(str(summary.out))}[/]", highlight=False)


def print_check(data: dict[str, Any], console: Console) -> None:
    """Per split: the problems table, the class histogram and the box sizes by FPN level."""
    from fpncli.data.check import PROBLEMS

    for split, s in data["splits"].items():
        table = Table(
            title=f"{esc(split)}: {s['images']:,} images, {s['boxes']:,} boxes ({esc(s['annotations'])})"
        )
        table.add_column("check")
        table.add_column("count", justify="right")
        table.add_column("first examples")
        for kind, label in PROBLEMS.items():
            n = s["problems"][kind]
            shown = "; ".join(s["examples"].get(kind, []))
            table.add_row(label, f"[red]{n:,}[/]" if n else "0", esc(shown))
        table.add_section()
        table.add_row("empty images (no object)", f"{s['empty_images']:,}", "")
        table.add_row("crowd regions", f"{s['crowd']:,}", "")
        console.print(table)
        _print_classes(s["classes"], console)
        _print_levels(s["levels"], data["model_input"], console)
    verdict = "[green]no problems found[/]" if data["ok"] else "[red]problems found (see the tables)[/]"
    console.print(verdict)


def _bar(n: int, top: int) -> str:
    return "█" * max(1 if n else 0, round(BAR * n / top)) if top else ""


def _print_classes(classes: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="classes")
    for column in ("id", "name", "boxes", "images", ""):
        table.add_column(column, justify="right" if column in ("id", "boxes", "images") else "left")
    top = max((c["boxes"] for c in classes), default=0)
    for c in sorted(classes, key=lambda c: -c["boxes"]):
        table.add_row(
            str(c["id"]), esc(c["name"]), f"{c['boxes']:,}", f"{c['images']:,}", _bar(c["boxes"], top)
        )
    console.print(table)


def _print_levels(levels: dict[str, Any] | None, model_input: dict[str, int], console: Console) -> None:
    if not levels:
        return
    if "error" in levels:
        console.print(f"box sizes: not available ({esc(levels['error'])})", highlight=False)
        return
    table = Table(
        title=f"box sizes √(w·h) after resizing to --min-size {model_input['min_size']} "
        f"--max-size {model_input['max_size']}, and the FPN level Eqn. (1) gives them"
    )
    for column in ("size (px)", "boxes", "share", "level", ""):
        table.add_column(column, justify="right" if column in ("boxes", "share") else "left")
    rows = levels["histogram"]
    top = max((r["boxes"] for r in rows), default=0)
    for r in rows:
        high = "∞" if r["high"] is None else f"{r['high']:g}"
        table.add_row(
            f"{r['low']:g}–{high}",
            f"{r['boxes']:,}",
            f"{100 * r['share']:.1f} %",
            r["level"] or "-",
            _bar(r["boxes"], top),
        )
    console.print(table)
    per_level = ", ".join(f"{k} {v:,}" for k, v in levels["per_level"].items())
    buckets = ", ".join(f"{k} {v:,}" for k, v in levels["coco_buckets"].items())
    console.print(f"per level: {per_level}; COCO area buckets (original pixels): {buckets}", highlight=False)
