"""Precision-recall curves from COCOeval's accumulated precision array, saved as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _curve(precision: np.ndarray) -> np.ndarray | None:
    """Mean over the last axis of entries > -1 (COCO's "no ground truth" marker), per recall step.

    ``precision``: ``[R, K]`` -> ``[R]``, or None when no column has ground truth.
    """
    valid = (precision > -1).all(axis=0)
    if not valid.any():
        return None
    return precision[:, valid].mean(axis=1)


def plot_pr_curves(
    precision: np.ndarray,
    rec_thrs: np.ndarray,
    iou_thrs: np.ndarray,
    class_names: Sequence[str],
    out_dir: str | Path,
) -> list[Path]:
    """Save ``pr_overall.png`` (mean over classes) and ``pr_per_class.png`` (one panel per class).

    Args:
        precision: ``[T, R, K]`` interpolated precision at IoU thresholds T, recall thresholds
            R and classes K, for area "all" and 100 detections (COCOeval's
            ``eval["precision"][:, :, :, 0, -1]``); -1 where a class has no ground truth.
        rec_thrs: ``[R]`` recall thresholds (0, 0.01, ..., 1).
        iou_thrs: ``[T]`` IoU thresholds (0.5, 0.55, ..., 0.95).
        class_names: ``K`` names, in the order of the class axis.
        out_dir: where the PNGs go.

    Returns:
        The paths written. Classes without ground truth get an empty, labelled panel.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    written = []

    fig, ax = plt.subplots(figsize=(6, 5))
    curves = [("IoU=0.50", precision[t50]), ("IoU=0.75", precision[t75])]
    for label, p in curves:
        c = _curve(p)
        if c is not None:
            ax.plot(rec_thrs, c, label=f"{label} (AP {c.mean():.3f})")
    # AP@[.5:.95]: the mean curve over all IoU thresholds.
    per_t = [c for c in (_curve(precision[t]) for t in range(len(iou_thrs))) if c is not None]
    if per_t:
        mean = np.mean(per_t, axis=0)
        ax.plot(rec_thrs, mean, "k--", label=f"IoU=0.50:0.95 (AP {mean.mean():.3f})")
    _style(ax, "Precision-recall, mean over classes")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    written.append(out / "pr_overall.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    k = len(class_names)
    if k:
        cols = min(8, k)
        rows = math.ceil(k / cols)
        # No sharex/sharey and no tight_layout: both are quadratic in the number of axes
        # (80 COCO classes took ~20 s); fixed limits and ticks give the same figure.
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.0 * rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= k:
                ax.axis("off")
                continue
            p50, p75 = precision[t50, :, i], precision[t75, :, i]
            if (p50 > -1).all():
                ax.plot(rec_thrs, p50, lw=1.2, label="0.50")
                ax.plot(rec_thrs, p75, lw=1.0, label="0.75")
                ap = precision[:, :, i]
                title = f"{class_names[i]}  AP50 {p50.mean():.2f}  AP {ap.mean():.2f}"
            else:
                title = f"{class_names[i]}  (no ground truth)"
            ax.set_title(title, fontsize=7)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
        axes.flat[0].legend(title="IoU", fontsize=6, title_fontsize=6, loc="lower left")
        fig.supxlabel("recall", fontsize=8)
        fig.supylabel("precision", fontsize=8)
        fig.subplots_adjust(
            left=0.05,
            right=0.99,
            bottom=0.6 / (2.0 * rows) + 0.02,
            top=1 - 0.4 / (2.0 * rows),
            wspace=0.25,
            hspace=0.45,
        )
        written.append(out / "pr_per_class.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written


def _style(ax, title: str) -> None:
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
