"""Rows run with several seeds: their mean and spread, and which differences between rows
exceed the noise those repeats measure.

A row's spread is the sample standard deviation over its seeds. The noise of one run is the
pooled standard deviation of every repeated row, sigma = sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)),
so a row run once borrows the noise measured on the others. The difference of two rows'
means (n_a and n_b seeds) then has a standard deviation sigma * sqrt(1/n_a + 1/n_b); it is
said to exceed the noise when it is larger than twice that (about 95 % under a normal model;
with 2-3 seeds per row sigma itself is rough, which the sentence says).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from fpncli.evaluation.coco_eval import RECALL_KEYS

METRICS = (*(k for k, _, _ in RECALL_KEYS), "AP50", "AP", "APs", "APm", "APl")
COMPARED = ("AP", "AR1k")  # the table's verdict: detector AP and proposal recall


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per row name (in first-seen order) from the runs of every seed: the mean
    of each metric, ``spread`` (sample standard deviation, rows with 2+ seeds), ``seeds``
    and ``n``; the median time per image. A metric COCO could not compute (-1) in any seed
    stays -1."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(run["neck"], []).append(run)
    table = []
    for group in groups.values():
        row = dict(group[0])
        row["seeds"] = [r["settings"]["seed"] for r in group]
        row["n"] = len(group)
        if len(group) > 1:
            spread = {}
            for key in METRICS:
                values = [r[key] for r in group]
                if min(values) < 0:
                    row[key] = -1.0
                    continue
                row[key] = statistics.fmean(values)
                spread[key] = statistics.stdev(values)
            row["spread"] = spread
            row["seconds_per_image"] = statistics.median(r["seconds_per_image"] for r in group)
            row["train_seconds"] = sum(r["train_seconds"] or 0 for r in group)
        table.append(row)
    return table


def pooled_noise(table: list[dict[str, Any]], key: str) -> float | None:
    """The pooled standard deviation of one run's ``key`` over the repeated rows (None if no
    row was repeated)."""
    num = den = 0.0
    for row in table:
        if row["n"] > 1 and key in row.get("spread", {}):
            num += (row["n"] - 1) * row["spread"][key] ** 2
            den += row["n"] - 1
    return math.sqrt(num / den) if den else None


def differences(table: list[dict[str, Any]], reference: str = "fpn") -> dict[str, Any] | None:
    """Each row against ``reference`` on :data:`COMPARED`: the difference of means (points),
    the threshold it must pass, and whether it does; None without the reference row or
    without a repeated row."""
    by = {r["neck"]: r for r in table}
    if reference not in by:
        return None
    ref = by[reference]
    out: dict[str, Any] = {"reference": reference, "noise": {}, "rows": []}
    for key in COMPARED:
        sigma = pooled_noise(table, key)
        if sigma is None:
            return None
        out["noise"][key] = 100 * sigma
    for row in table:
        if row["neck"] == reference:
            continue
        entry: dict[str, Any] = {"neck": row["neck"]}
        for key in COMPARED:
            if row[key] < 0 or ref[key] < 0:
                continue
            delta = 100 * (row[key] - ref[key])
            threshold = 2 * out["noise"][key] * math.sqrt(1 / row["n"] + 1 / ref["n"])
            entry[key] = {"delta": delta, "threshold": threshold, "exceeds": abs(delta) > threshold}
        out["rows"].append(entry)
    return out


def noise_sentence(diff: dict[str, Any] | None) -> str:
    """What the repeats say, in one paragraph."""
    if diff is None:
        return (
            "No row was run with several seeds (ROW@N or --seeds N), so no difference "
            "between rows can be told from noise."
        )
    noise = ", ".join(f"{k} {v:.1f}" for k, v in diff["noise"].items())
    parts = []
    for entry in diff["rows"]:
        cells = [
            f"{k} {entry[k]['delta']:+.1f} ({'exceeds' if entry[k]['exceeds'] else 'within'} "
            f"±{entry[k]['threshold']:.1f})"
            for k in COMPARED
            if k in entry
        ]
        if cells:
            parts.append(f"{entry['neck']}: " + ", ".join(cells))
    return (
        f"Noise of one run (pooled seed standard deviation, points): {noise}. Against "
        f"{diff['reference']}, a difference counts when it exceeds twice the noise of a difference "
        f"of means (rough with 2-3 seeds): " + ("; ".join(parts) or "no other row") + "."
    )
