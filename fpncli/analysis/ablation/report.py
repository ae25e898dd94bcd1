"""Reporting the ablation: the paper's small-object claim checked on the rows, the table's
cells, and ``ablation.md``."""

from __future__ import annotations

from typing import Any

from fpncli.analysis.ablation.machine import machine_sentence
from fpncli.analysis.ablation.rows import SINGLE_SCALE
from fpncli.analysis.ablation.seeds import noise_sentence


def small_object_claim(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper's claim, checked on these rows: FPN's gain over the best single-scale
    baseline (per metric and object size) is largest for small objects.

    Returns ``None`` when the rows lack FPN or both baselines; else, for AR1k and AP, the
    gains (FPN minus the better baseline, in points) for small / medium / large and
    whether small is the largest.
    """
    by = {r["neck"]: r for r in rows}
    baselines = [by[n] for n in SINGLE_SCALE if n in by]
    if "fpn" not in by or not baselines:
        return None
    out: dict[str, Any] = {"baselines": [b["neck"] for b in baselines]}
    for family, keys in (("AR1k", ("AR1k_s", "AR1k_m", "AR1k_l")), ("AP", ("APs", "APm", "APl"))):
        gains = {}
        for key in keys:
            values = [b[key] for b in baselines if b[key] >= 0]
            if by["fpn"][key] < 0 or not values:
                continue
            gains[key] = 100.0 * (by["fpn"][key] - max(values))
        largest = max(gains, key=lambda k: gains[k]) if gains else None
        out[family] = {"gains": gains, "largest": largest, "small_largest": largest in ("AR1k_s", "APs")}
    out["holds"] = all(out[f]["small_largest"] for f in ("AR1k", "AP"))
    return out


COLUMNS = (
    ("AR100", "AR100"),
    ("AR1k", "AR1k"),
    ("AR1k_s", "AR1k s"),
    ("AR1k_m", "AR1k m"),
    ("AR1k_l", "AR1k l"),
    ("AP50", "AP50"),
    ("AP", "AP"),
    ("APs", "APs"),
    ("APm", "APm"),
    ("APl", "APl"),
)


def format_row(row: dict[str, Any]) -> list[str]:
    """Table cells: metrics in percent (one decimal, '-' where COCO gives -1; a row run with
    several seeds shows mean±standard deviation and its n), parameters in millions (used by
    inference), milliseconds per image."""
    spread = row.get("spread", {})
    cells = [row["neck"] + (f" (n={row['n']})" if row.get("n", 1) > 1 else "")]
    for key, _ in COLUMNS:
        cell = "-" if row[key] < 0 else f"{100 * row[key]:.1f}"
        if key in spread:  # mean ± sample standard deviation over the row's seeds
            cell += f"±{100 * spread[key]:.1f}"
        cells.append(cell)
    cells.append(f"{row['parameters_used'] / 1e6:.2f}")
    cells.append(f"{1000 * row['seconds_per_image']:.0f}")
    return cells


def header() -> list[str]:
    return ["neck", *(title for _, title in COLUMNS), "params (M)", "ms / image"]


def claim_sentence(claim: dict[str, Any] | None) -> str:
    """One honest sentence about the small-object claim, from the numbers."""
    if claim is None:
        return "The small-object claim needs FPN and at least one single-scale baseline (c4, c5) in the run."
    parts = []
    for family, label in (("AR1k", "proposal recall (AR1k)"), ("AP", "detector AP")):
        gains = claim[family]["gains"]
        if not gains:
            parts.append(f"{label}: no objects of some size to compare")
            continue
        listed = ", ".join(
            f"{k.replace('AR1k_', '').replace('AP', '') or k} {v:+.1f}" for k, v in gains.items()
        )
        parts.append(f"{label} gains over the best baseline (points, s/m/l): {listed}")
    verdict = (
        "held: FPN's largest gain is on small objects for both proposals and detection"
        if claim["holds"]
        else "did not fully hold in this run: FPN's largest gain is not on "
        "small objects for " + " and ".join(f for f in ("AR1k", "AP") if not claim[f]["small_largest"])
    )
    return f"The paper's claim {verdict}. " + "; ".join(parts) + "."


def warm_start_sentence(record: dict[str, Any] | None, settings: dict[str, Any]) -> str:
    """Where every row's ResNet started."""
    if record is not None:
        key = record["key"]
        return (
            f"Every row's ResNet started from the warm start {record['path']} (sha256 "
            f"{record['sha256'][:16]}): {key['backbone']} trained {key['iters']} iterations x "
            f"{key['batch_size']} to classify {record['train_crops']} {key['crop']} px crops of the "
            f"training split ({', '.join(record['classes'])}), {100 * record['val_accuracy']:.1f} % "
            f"right on {record['val_crops']} validation crops; frozen BatchNorm, stem and res2 frozen."
        )
    if "backbone_weights" in settings:
        sha = settings.get("backbone_sha256")
        return f"Every row's ResNet started from {settings['backbone_weights']}" + (
            f" (sha256 {sha[:16]})." if sha else "."
        )
    return "Every row's ResNet trained from scratch."


def to_markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    lines = [
        "| " + " | ".join(header()) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header()) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(format_row(r)) + " |" for r in result["rows"]]
    necks = {r["neck"].partition("+")[0] for r in result["rows"]}
    options = [
        f"{k} {s[k]}"
        for k in ("nasfpn_stacks", "bifpn_repeats", "rfp_steps")
        if k in s and k.split("_")[0] in necks
    ]
    lines += [
        "",
        f"Budget {s['budget']:g}: {s['iters']} iterations of {s['batch_size']} images per neck, "
        f"{s['train_images']} training and {s['val_images']} validation images ({s['data']}), seed "
        f"{s['seed']}, preset {s['preset']}"
        + (f", {', '.join(options)}" if options else "")
        + f"; {sum(r['train_seconds'] or 0 for r in result.get('runs', result['rows'])) / 60:.1f} min of training in all. "
        "AR: RPN proposals (top "
        f"{s['proposals']} after NMS, class-agnostic, IoU 0.50:0.95); AP: detector at the preset's inference settings. Every neck's RPN "
        "keeps the pre-NMS candidates of a five-level pyramid (a single-level baseline keeps 5x the "
        "per-level top-n). params: those an inference pass uses (c4 skips conv5); time: median of "
        "one-image forward passes. Rows marked (n=N): mean±sample standard deviation over N seeds "
        "(training seed; same data and warm start).",
        "",
        warm_start_sentence(result.get("warm_start"), s),
        "",
        "Machine: " + machine_sentence(env) + ".",
        "",
        noise_sentence(result.get("noise")),
        "",
        claim_sentence(result["claim"]),
        "",
    ]
    return "\n".join(lines)
