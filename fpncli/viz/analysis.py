"""Pictures of ``fpn eval --analyze``: TIDE's bars, COCO's error-analysis curves, the confusion
matrix, the worst images with every box coloured by its error type, and errors by level.

Every function takes plain arrays and names (no evaluation objects) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fpncli.viz.draw import _font, _text_color, style_for

# TIDE's error colours (its own plots' palette, roughly), true positives green, objects white.
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "TP": (46, 204, 64),
    "Cls": (255, 133, 27),
    "Loc": (255, 220, 0),
    "Both": (177, 13, 201),
    "Dupe": (57, 204, 204),
    "Bkg": (255, 65, 54),
    "Miss": (240, 18, 190),
    "GT": (255, 255, 255),
}
# COCO's error-analysis palette (the challenge's and MMDetection's colours).
CURVE_COLOURS = (
    (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.31, 0.51, 0.74), (0.75, 0.31, 0.30),
    (0.36, 0.90, 0.38), (0.50, 0.39, 0.64), (1.0, 0.6, 0.0),
)  # fmt: skip


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_tide_bars(
    errors: Mapping[str, float], special: Mapping[str, float], title: str, path: str | Path
) -> Path:
    """Two bar charts side by side: the six main errors' dAP and the two special ones."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    names = list(errors)
    a.bar(
        names,
        [errors[n] for n in names],
        color=[np.array(ERROR_COLOURS.get(n, (128,) * 3)) / 255 for n in names],
    )
    for i, n in enumerate(names):
        a.text(i, errors[n], f"{errors[n]:.2f}", ha="center", va="bottom", fontsize=9)
    a.set_ylabel("dAP50 (points)")
    a.set_title("main errors: AP50 gained by fixing each")
    sp = list(special)
    b.bar(sp, [special[n] for n in sp], color="0.55")
    for i, n in enumerate(sp):
        b.text(i, special[n], f"{special[n]:.2f}", ha="center", va="bottom", fontsize=9)
    b.set_title("special")
    top = max([*errors.values(), *special.values(), 1.0]) * 1.18
    a.set_ylim(0, top)
    b.set_ylim(0, top)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)


def _curve_axes(ax: Any, recall: np.ndarray, curves: np.ndarray, types: Sequence[str], title: str) -> None:
    """COCO's stacked error-analysis plot: area between consecutive curves filled."""
    previous = np.zeros_like(recall)
    for k, name in enumerate(types):
        ax.plot(recall, curves[k], color="black", linewidth=0.5)
        ax.fill_between(
            recall, previous, curves[k], color=CURVE_COLOURS[k], label=f"[{curves[k].mean():.3f}] {name}"
        )
        previous = curves[k]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)


def save_error_curves(
    recall: np.ndarray, curves: np.ndarray, types: Sequence[str], title: str, path: str | Path
) -> Path:
    """One stacked error-analysis plot (``curves``: ``[7, R]``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    _curve_axes(ax, recall, curves, types, title)
    fig.subplots_adjust(left=0.13, right=0.96, bottom=0.12, top=0.92)
    return _save(plt, fig, path)


def save_error_curve_panels(
    recall: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray | None]],
    types: Sequence[str],
    title: str,
    path: str | Path,
) -> Path:
    """Several stacked plots in a row (one per size; ``None``: no ground truth of that size)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (name, curves) in zip(np.atleast_1d(axes), panels):
        if curves is None:
            ax.set_title(f"{name}: no ground truth", fontsize=10)
            ax.axis("off")
        else:
            _curve_axes(ax, recall, curves, types, name)
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.84, wspace=0.25)
    return _save(plt, fig, path)


def save_confusion(
    matrix: np.ndarray,
    labels: Sequence[str],
    title: str,
    path: str | Path,
    normalise: bool = True,
    annotate: int = 15,
) -> Path:
    """The confusion matrix as a heat map (rows: ground truth, columns: prediction; the last
    of each is background), coloured by row share (``normalise``) or count. Rows and columns
    where nothing happened are dropped so that 80 classes stay readable; the ``annotate``
    largest confusions between two classes are outlined and carry their count."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    used = (m.sum(axis=0) + m.sum(axis=1)) > 0
    used[-1] = True
    idx = np.flatnonzero(used)
    m = m[np.ix_(idx, idx)]
    names = [labels[int(i)] for i in idx]
    sums = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, sums, out=np.zeros_like(m), where=sums > 0) if normalise else m
    n = len(idx)
    side = min(22.0, max(6.0, 0.22 * n + 3))
    fig, ax = plt.subplots(figsize=(side, side * 0.92))
    image = ax.imshow(
        shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(1.0, shown.max()), interpolation="nearest"
    )
    font = 9 if n <= 30 else 8 if n <= 60 else 7
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=11)
    # Thin grid lines so a row can be followed across 80 columns.
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="0.9", linewidth=0.3)
    ax.tick_params(which="minor", length=0)
    # The largest confusions between two classes (by count) carry their value; with few
    # classes the diagonal does too.
    off = m[:-1, :-1].copy()
    np.fill_diagonal(off, 0)
    top = np.argsort(-off, axis=None, kind="stable")[:annotate]
    cells = {(int(i), int(j)) for i, j in zip(*np.unravel_index(top, off.shape)) if off[i, j] > 0}
    cells |= {(i, i) for i in range(n - 1) if shown[i, i] > 0} if n <= 30 else set()
    for i, j in cells:
        if i != j:
            ax.add_patch(
                plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=0.8)
            )
        text = str(int(m[i, j]))
        dark = shown[i, j] > (0.55 if normalise else 0.55 * shown.max())
        ax.text(j, i, text, ha="center", va="center", fontsize=font, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    margin = 0.9 + 0.06 * max((len(str(x)) for x in names), default=4)  # inches for the labels
    fig.subplots_adjust(left=margin / side, bottom=margin / (side * 0.92), right=0.97, top=1 - 0.45 / side)
    return _save(plt, fig, path)


def draw_error_image(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    kinds: Sequence[str],
    labels: Sequence[str],
    title: str,
) -> Image.Image:
    """``image`` with boxes (``[x1, y1, x2, y2]`` pixels) outlined in their error type's colour
    (:data:`ERROR_COLOURS`; ground truth white, missed objects magenta and dashed-thick),
    each labelled, and a title and colour key above."""
    out = image.convert("RGB")
    line, size = style_for(*out.size)
    font = _font(size)
    draw = ImageDraw.Draw(out)
    # Ground truth first, detections over it; false positives last so they stay visible.
    rank = {"GT": 0, "Miss": 1, "TP": 2}
    for i in sorted(range(len(boxes)), key=lambda i: rank.get(kinds[i], 3)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        colour = ERROR_COLOURS.get(kinds[i], (128, 128, 128))
        width = line * 2 if kinds[i] in ("Miss", "GT") else line
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        if labels[i]:
            left, top, right, bottom = draw.textbbox((0, 0), labels[i], font=font)
            tx, ty = max(0.0, x1), max(0.0, y1 - (bottom - top) - 2)
            draw.rectangle([tx, ty, tx + right - left + 2, ty + bottom - top + 2], fill=colour)
            draw.text((tx + 1 - left, ty + 1 - top), labels[i], fill=_text_color(colour), font=font)
    header = Image.new("RGB", (out.width, 2 * (size + 6)), (30, 30, 30))
    hd = ImageDraw.Draw(header)
    hd.text((4, 2), title, fill=(255, 255, 255), font=font)
    x = 4
    for name, colour in ERROR_COLOURS.items():
        hd.rectangle([x, size + 8, x + size, 2 * size + 8], fill=colour)
        hd.text((x + size + 3, size + 7), name, fill=(230, 230, 230), font=font)
        x += size + 8 + int(hd.textlength(name, font=font))
    page = Image.new("RGB", (out.width, out.height + header.height))
    page.paste(header, (0, 0))
    page.paste(out, (0, header.height))
    return page


def save_level_table(
    table: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, path: str | Path
) -> Path:
    """Stacked horizontal bars: for each row (error type x size), the share of detections per
    level (``table``: ``[rows, levels]`` counts), the count at the right."""
    plt = _plt()
    t = np.asarray(table, dtype=np.float64)
    sums = t.sum(axis=1, keepdims=True)
    share = np.divide(t, sums, out=np.zeros_like(t), where=sums > 0)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.6))
    cmap = plt.get_cmap("viridis", max(2, len(columns)))
    left = np.zeros(len(rows))
    for j, name in enumerate(columns):
        ax.barh(range(len(rows)), share[:, j], left=left, color=cmap(j), label=name, height=0.8)
        for i in range(len(rows)):
            if share[i, j] >= 0.08:
                ax.text(left[i] + share[i, j] / 2, i, f"{share[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if j < len(columns) / 2 else "black")  # fmt: skip
        left += share[:, j]
    for i in range(len(rows)):
        ax.text(1.01, i, f"n={int(sums[i, 0])}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of detections")
    ax.set_title(title, fontsize=10)
    ax.legend(
        ncol=len(columns),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.04 + 0.5 / max(len(rows), 1)),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    return _save(plt, fig, path)
