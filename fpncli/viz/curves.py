"""Training curves from a run's ``metrics.jsonl``: losses and lr per iteration, val AP."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """``(train records, val records)`` of a ``metrics.jsonl`` (bad lines skipped)."""
    train: list[dict] = []
    val: list[dict] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (val if rec.get("type") == "val" else train).append(rec)
    return train, val


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
        values = [r.get(key) for r in train]
        if any(v is not None and v > 0 for v in values):
            axes[0].plot(its, values, label=key, linewidth=2 if key == "loss" else 1)
    axes[0].set_yscale("log")
    axes[0].set_title("training losses")
    axes[1].plot(its, [r.get("lr") for r in train], color="tab:purple")
    axes[1].set_title("learning rate")
    if val:
        vits = [r["iter"] for r in val]
        for key in ("AP", "AP50", "APs", "APm", "APl"):
            axes[2].plot(vits, [r.get(key) for r in val], marker="o", label=key)
        axes[2].set_ylim(0, 1)
    else:
        axes[2].text(0.5, 0.5, "no validation set", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_title("validation (COCO)")
    if extra:
        # Included in "loss" (the sum the optimiser sees); drawn apart to keep panel 1 readable.
        for key in extra:
            values = [r.get(key) for r in train]
            if any(v is not None and v > 0 for v in values):
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
