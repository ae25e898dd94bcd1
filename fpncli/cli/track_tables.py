"""`fpn detect --track`'s tables: the tracks of each video and its line counts."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

MAX_ROWS = 20  # tracks listed per video; predictions.json has them all


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def print_tracks(console: Console, videos: list[dict[str, Any]]) -> None:
    """One table per tracked video (the longest tracks first, at most :data:`MAX_ROWS`), and
    one of its ``--count-line`` counts."""
    for video in videos:
        if "tracks" not in video:
            continue
        settings = video["tracking"]
        every = settings["every_nth_frame"]
        seen = "every frame" if every == 1 else f"every {_ordinal(every)} frame (--vid-stride)"
        name = (
            video["file"].replace("\\", "/").rsplit("/", 1)[-1]
            if "://" not in video["file"]
            else video["file"]
        )
        tracks = video["tracks"]
        table = Table(
            title=f"tracks in {esc(name)}: {len(tracks)} ({settings['tracker']}, {seen})",
            title_justify="left",
        )
        for column in ("track", "class", "first frame", "last frame", "frames", "mean score"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in sorted(tracks, key=lambda r: (-r["frames"], r["track_id"]))[:MAX_ROWS]:
            table.add_row(
                str(row["track_id"]),
                esc(row["label"]),
                str(row["first_frame"]),
                str(row["last_frame"]),
                str(row["frames"]),
                f"{row['mean_score']:.2f}",
            )
        if len(tracks) > MAX_ROWS:
            table.caption = f"the {MAX_ROWS} longest of {len(tracks)} tracks; predictions.json lists all"
        if tracks:
            console.print(table)
        else:
            console.print(f"tracks in {esc(name)}: none", highlight=False)
        line = video.get("count_line")
        if line:
            counts = Table(
                title="line " + ",".join(f"{v:g}" for v in line["line"]) + " crossings",
                title_justify="left",
            )
            counts.add_column("class")
            for direction in line["directions"]:
                counts.add_column(direction, justify="right")
            labels = sorted({label for d in line["directions"] for label in line["counts"][d]})
            for label in labels:
                counts.add_row(
                    esc(label), *(str(line["counts"][d].get(label, 0)) for d in line["directions"])
                )
            counts.add_row("[bold]all[/]", *(f"[bold]{line['total'][d]}[/]" for d in line["directions"]))
            console.print(counts)
