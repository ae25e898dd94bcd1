"""Training curves from a run's ``metrics.jsonl``: losses and lr per iteration, val AP; one
run in detail (:func:`plot_training_curves`) or several overlaid (:func:`plot_runs`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from fpncli.errors import FpnError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """``(train records, val records)`` of a ``metrics.jsonl``; lines that are not a JSON
    record with an ``iter`` (e.g. the half-written last line of a run in progress) are skipped."""
    train: list[dict] = []
    val: list[dict] = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("iter"), (int, float)):
            continue
        (val if rec.get("type") == "val" else train).append(rec)
    return train, val


def _value(record: dict, key: str) -> float:
    """``record[key]`` as a float; NaN (a gap in the curve) when missing or not a number."""
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def metrics_file(run: str | os.PathLike) -> Path:
    """``RUN/metrics.jsonl`` for a run folder, or the file itself; an :class:`FpnError` naming
    the file when it is missing or holds no record."""
    path = Path(run)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FpnError(f"{file}: no such file (expected a training run folder or its {METRICS_FILE})")
    try:
        train, val = read_metrics(file)
    except OSError as exc:
        raise FpnError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not train and not val:
        raise FpnError(f"{file}: no training metrics in it (empty, or not an fpn train {METRICS_FILE})")
    return file


def run_labels(runs: Sequence[str | os.PathLike]) -> list[str]:
    """Legend names: each run folder's name, or the path as given where two names clash."""
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name or str(r) for r in runs]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, runs)]


def plot_training_curves(metrics_file: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a PNG with three panels: losses (log scale), learning rate, validation AP/AP50;
    and a fourth when the model returned other losses (e.g. AugFPN's auxiliary head's)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    train, val = read_metrics(metrics_file)
    main = ("loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
    extra = sorted({k for r in train for k in r if k.startswith("loss_") and k not in main})
    fig, axes = plt.subplots(1, 4 if extra else 3, figsize=(20 if extra else 15, 4))
    its = [r["iter"] for r in train]
    for key in main:
        values = [_value(r, key) for r in train]
        if any(v > 0 for v in values):
            axes[0].plot(its, values, label=key, linewidth=2 if key == "loss" else 1)
    axes[0].set_yscale("log")
    axes[0].set_title("training losses")
    axes[1].plot(its, [_value(r, "lr") for r in train], color="tab:purple")
    axes[1].set_title("learning rate")
    if val:
        vits = [r["iter"] for r in val]
        for key in ("AP", "AP50", "APs", "APm", "APl"):
            axes[2].plot(vits, [_value(r, key) for r in val], marker="o", label=key)
        axes[2].set_ylim(0, 1)
    else:
        axes[2].text(0.5, 0.5, "no validation set", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_title("validation (COCO)")
    if extra:
        # Included in "loss" (the sum the optimiser sees); drawn apart to keep panel 1 readable.
        for key in extra:
            values = [_value(r, key) for r in train]
            if any(v > 0 for v in values):
                axes[3].plot(its, values, label=key.removeprefix("loss_"), linewidth=1)
        axes[3].set_yscale("log")
        axes[3].set_title("other losses (included in loss)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in (axes[0], *axes[2:]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_runs(
    metrics_files: Sequence[str | os.PathLike], labels: Sequence[str], out: str | os.PathLike
) -> Path:
    """Write a PNG comparing runs, one colour each: total training loss (log scale), learning
    rate, and validation AP (solid, with markers) and AP50 (dashed) against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_val = False
    for i, (file, label) in enumerate(zip(metrics_files, labels)):
        color = colors[i % len(colors)]
        train, val = read_metrics(file)
        its = [r["iter"] for r in train]
        if train:
            axes[0].plot(its, [_value(r, "loss") for r in train], color=color, label=label)
            axes[1].plot(its, [_value(r, "lr") for r in train], color=color, label=label)
        if val:
            any_val = True
            vits = [r["iter"] for r in val]
            axes[2].plot(vits, [_value(r, "AP") for r in val], color=color, marker="o", label=f"{label} AP")
            axes[2].plot(
                vits, [_value(r, "AP50") for r in val], color=color, linestyle="--", label=f"{label} AP50"
            )
    axes[0].set_yscale("log")
    axes[0].set_title("training loss (sum)")
    axes[1].set_title("learning rate")
    axes[2].set_title("validation (COCO)")
    if any_val:
        axes[2].set_ylim(0, 1)
    else:
        axes[2].text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
