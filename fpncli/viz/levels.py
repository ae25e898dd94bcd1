"""Pictures of pyramid levels: per-level heat maps, a pyramid montage, detections coloured by
level, bottom-up vs top-down maps, adaptive feature pooling's and soft RoI selection's levels (one image), and box sizes vs anchors, coverage per level
(a dataset). All saved as PNG with matplotlib's Agg backend (no display needed).

Inputs are the reports of :mod:`fpncli.viz.reports`; every function returns the paths written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fpncli.viz.reports import POSITIVE_IOU, USABLE_IOU, AnchorFitReport, ImageInspection

DPI = 100
AFP_MAX_BARS = 40


def _labelled_box(ax: Any, box: Sequence[float], label: str, colour: str | tuple[Any, ...]) -> None:
    """An xyxy box outline with its label on a filled tag at the top-left corner."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
    ax.text(
        x1,
        y1,
        label,
        fontsize=7,
        color="white",
        va="bottom",
        bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0},
    )


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (creating its folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def level_colours(names: list[str]) -> dict[str, tuple]:
    """One distinct colour per level name, in pyramid order (finest first)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _extent(ins: ImageInspection, shape: tuple[int, int], stride: int) -> tuple[float, float, float, float]:
    """Where a map of ``shape`` cells (cropped to the image) lies in original-image pixels:
    cell ``(r, c)`` covers input pixels ``[c*stride, (c+1)*stride)``, which the model's
    resizing maps back by ``image / input``."""
    sy = ins.image_size[0] / ins.input_size[0]
    sx = ins.image_size[1] / ins.input_size[1]
    return (0.0, shape[1] * stride * sx, shape[0] * stride * sy, 0.0)


def _figsize(ins: ImageInspection, width: float = 6.0) -> tuple[float, float]:
    h, w = ins.image_size
    return width, max(2.0, width * h / w)


def save_heatmaps(ins: ImageInspection, out_dir: str | Path) -> list[Path]:
    """``heatmap_<level>.png`` per level: the image with the level's activation strength
    (mean |activation| over channels per cell) laid over it, and a colour bar."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, strength in ins.strength.items():
        stride = ins.strides[name]
        fig, ax = plt.subplots(figsize=_figsize(ins, 6.5), dpi=DPI)
        ax.imshow(ins.image)
        shown = ax.imshow(
            strength,
            cmap="inferno",
            alpha=0.6,
            interpolation="bilinear",
            extent=_extent(ins, strength.shape, stride),
        )
        ax.set_xlim(0, ins.image_size[1])
        ax.set_ylim(ins.image_size[0], 0)
        ax.set_axis_off()
        ax.set_title(f"{name}: stride {stride}, {strength.shape[0]}x{strength.shape[1]} cells over the image")
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("mean |activation| over channels")
        fig.tight_layout()
        path = out / f"heatmap_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def save_pyramid_montage(ins: ImageInspection, path: str | Path) -> Path:
    """All levels side by side, each at its own resolution (one square per cell, no smoothing)
    and its own colour scale, titled with its stride and size."""
    plt = _plt()
    names = list(ins.strength)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.0 * (len(names) + 1), 3.4), dpi=DPI, squeeze=False)
    axes = axes[0]
    axes[0].imshow(ins.image)
    axes[0].set_title(
        f"input {ins.image_size[1]}x{ins.image_size[0]}\n"
        f"(model sees {ins.input_size[1]}x{ins.input_size[0]})",
        fontsize=9,
    )
    for ax, name in zip(axes[1:], names):
        strength = ins.strength[name]
        shown = ax.imshow(strength, cmap="inferno", interpolation="nearest")
        ax.set_title(
            f"{name}  stride {ins.strides[name]}\n{strength.shape[0]}x{strength.shape[1]} cells", fontsize=9
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("Feature pyramid: mean |activation| per cell (each level on its own scale)", fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)


def save_detections(ins: ImageInspection, path: str | Path) -> Path:
    """The image with its detections, each box coloured by the level Eqn. (1) assigns it,
    and a legend with the count per level."""
    from matplotlib.patches import Patch

    plt = _plt()
    names = [row.name for row in ins.levels if row.detections is not None]
    colours = level_colours([row.name for row in ins.levels])
    fig, ax = plt.subplots(figsize=_figsize(ins, 7.0), dpi=DPI)
    ax.imshow(ins.image)
    counts = {name: 0 for name in names}
    for det in ins.detections:
        counts[det.level] = counts.get(det.level, 0) + 1
        _labelled_box(ax, det.box, f"{det.name} {det.score:.2f}", colours.get(det.level, "white"))
    handles = [
        Patch(facecolor=colours[n], label=f"{n} (stride {ins.strides[n]}): {counts[n]}") for n in names
    ]
    ax.legend(
        handles=handles,
        loc="upper right",
        fontsize=8,
        title="level by Eqn. (1)",
        title_fontsize=8,
        framealpha=0.85,
    )
    ax.set_axis_off()
    ax.set_title(
        f"{len(ins.detections)} detections with score >= {ins.score_thr:g}, coloured by level", fontsize=10
    )
    fig.tight_layout()
    return _save(plt, fig, path)


def save_bottom_up_comparison(ins: ImageInspection, path: str | Path) -> Path | None:
    """Bottom-up maps (top row) above the neck's level of the same stride (bottom row), so
    the top-down pathway's effect shows. None when no stride is shared."""
    plt = _plt()
    by_stride = {stride: name for name, stride in ins.strides.items()}
    pairs = [(c, by_stride[s]) for c, s in ins.bottom_up_strides.items() if s in by_stride]
    if not pairs:
        return None
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.2 * len(pairs), 6.2), dpi=DPI, squeeze=False)
    for col, (c_name, p_name) in enumerate(pairs):
        for row, (name, strength, what) in enumerate(
            ((c_name, ins.bottom_up[c_name], "bottom-up"), (p_name, ins.strength[p_name], "neck output"))
        ):
            ax = axes[row][col]
            shown = ax.imshow(strength, cmap="inferno", interpolation="nearest")
            ax.set_title(f"{name} ({what}), stride {ins.bottom_up_strides[c_name]}", fontsize=9)
            ax.set_axis_off()
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle("Bottom-up maps vs. the pyramid after the top-down pathway (mean |activation|)", fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, path)


def _level_choice_figure(
    ins: ImageInspection, level_of: Callable[[Any], str | None], head: str, title: str
) -> tuple[Any, Any, Any, list[Any], dict[str, Any]]:
    """The shared half of the AFP and soft-selection pictures: the ``AFP_MAX_BARS``
    best-scoring detections (smallest first), a figure whose left axis shows the image with
    each box coloured by ``level_of(det)`` and labelled ``HEAD pK | Eq.1 pJ``.

    Returns ``(plt, fig, right axis, detections, level colours)``.
    """
    plt = _plt()
    colours = level_colours([row.name for row in ins.levels])
    best = sorted(ins.detections, key=lambda d: -d.score)[:AFP_MAX_BARS]
    dets = sorted(best, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    rows = max(len(dets), 1)
    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=(13, max(4.5, min(0.3 * rows + 1.5, 14))),
        dpi=DPI,
        width_ratios=[1.3, 1],
        layout="constrained",
    )
    left.imshow(ins.image)
    for det in dets:
        level = level_of(det)
        _labelled_box(left, det.box, f"{head} {level} | Eq.1 {det.level}", colours.get(level or "", "white"))
    left.set_axis_off()
    left.set_title(title, fontsize=9)
    return plt, fig, right, dets, colours


def _size_label(det: Any) -> str:
    """``"name 37px"``: a detection's class and sqrt(area) in image pixels."""
    return f"{det.name} {np.sqrt(max((det.box[2] - det.box[0]) * (det.box[3] - det.box[1]), 0)):.0f}px"


def save_afp_levels(ins: ImageInspection, path: str | Path) -> Path | None:
    """Adaptive feature pooling's level selection (AFP models only, else None).

    Left: the detections, each box coloured by the level that won most fc6 units of the
    max fusion, labelled ``AFP pK | Eq.1 pJ``. Right: per detection (smallest at the top), the
    share of fc6 units each RoI level won, with a black diamond on the level Eqn. (1) would pick
    (the ``AFP_MAX_BARS`` best-scoring detections when there are more).
    """
    from matplotlib.patches import Patch

    if ins.afp is None:
        return None
    levels = ins.afp.levels
    plt, fig, right, dets, colours = _level_choice_figure(
        ins,
        lambda d: d.afp_level,
        "AFP",
        f"{ins.afp.total} detections (score >= {ins.score_thr:g}), coloured by\nthe level that won "
        f"the max fusion; {ins.afp.agree} agree with Eqn. (1)",
    )
    y = np.arange(len(dets))[::-1]
    left_edge = np.zeros(len(dets))
    for i, name in enumerate(levels):
        share = np.asarray([(d.afp_shares or [0.0] * len(levels))[i] for d in dets])
        right.barh(y, share, left=left_edge, color=colours[name], label=name)
        left_edge += share
    for yi, det in zip(y, dets):
        if det.level in levels and det.afp_shares:
            k = levels.index(det.level)
            middle = sum(det.afp_shares[:k]) + det.afp_shares[k] / 2
            right.plot([middle], [yi], marker="D", color="black", markersize=4)
    right.set_yticks(y, [_size_label(d) for d in dets])
    right.tick_params(axis="y", labelsize=7)
    right.set_xlim(0, 1)
    shown = f" ({len(dets)} best-scoring shown)" if len(dets) < len(ins.detections) else ""
    right.set_xlabel(f"share of fc6 units won by each level{shown}\nblack diamond: the level Eqn. (1) picks")
    right.legend(
        handles=[Patch(facecolor=colours[n], label=n) for n in levels],
        fontsize=8,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(levels),
        frameon=False,
    )
    if not dets:
        right.set_ylim(-1, 1)
        right.text(0.5, 0.5, "no detections", ha="center", va="center", transform=right.transAxes)
    fig.suptitle("Adaptive feature pooling: which level each detection's features came from", fontsize=10)
    return _save(plt, fig, path)


def save_soft_levels(ins: ImageInspection, path: str | Path) -> Path | None:
    """AugFPN's soft RoI selection per detection (soft-selection models only, else None).

    Left: the detections, each box coloured by the level its attention weighted most,
    labelled ``soft pK | Eq.1 pJ``. Right: per detection (smallest at the top), each RoI
    level's attention weight (sigmoid averaged over the pooled grid, 0..1 on its own: the
    levels are not normalised against each other), with a black diamond on the level
    Eqn. (1) would pick (the ``AFP_MAX_BARS`` best-scoring detections when there are more).
    """
    if ins.soft is None:
        return None
    levels = ins.soft.levels
    plt, fig, right, dets, _ = _level_choice_figure(
        ins,
        lambda d: d.soft_level,
        "soft",
        f"{ins.soft.total} detections (score >= {ins.score_thr:g}), coloured by the level\nsoft "
        f"RoI selection weighted most; {ins.soft.agree} agree with Eqn. (1)",
    )
    matrix = np.asarray([d.soft_weights or [0.0] * len(levels) for d in dets], dtype=float).reshape(
        -1, len(levels)
    )
    if len(dets):
        shown = right.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        fig.colorbar(shown, ax=right, fraction=0.046, pad=0.02, label="attention weight (sigmoid)")
        for yi, det in enumerate(dets):
            for xi, value in enumerate(matrix[yi]):
                right.text(xi, yi, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
            if det.level in levels:
                right.plot([levels.index(det.level) + 0.38], [yi], marker="D", color="black", markersize=4)
        right.set_yticks(range(len(dets)), [_size_label(d) for d in dets])
    else:
        right.text(0.5, 0.5, "no detections", ha="center", va="center", transform=right.transAxes)
        right.set_yticks([])
    right.set_xticks(range(len(levels)), levels)
    right.tick_params(axis="y", labelsize=7)
    more = f" ({len(dets)} best-scoring shown)" if len(dets) < len(ins.detections) else ""
    right.set_xlabel(f"each level's soft-selection weight{more}\nblack diamond: the level Eqn. (1) picks")
    fig.suptitle(
        "Soft RoI selection (AugFPN): how much each level contributes to each detection", fontsize=10
    )
    return _save(plt, fig, path)


def save_rfp_steps(ins: ImageInspection, path: str | Path) -> Path | None:
    """Recursive Feature Pyramid models only (else None): one column per level; rows are
    each pass's pyramid (pass 1 = the plain FPN), each step's gate (the share of that pass in
    the fusion, on a fixed 0..1 scale) and the fused pyramid the heads use. Activation rows
    share one colour scale per level, so the passes compare directly."""
    rfp = ins.rfp
    if rfp is None:
        return None
    plt = _plt()
    rows: list[tuple[str, dict, bool]] = []
    for k, pyramid in enumerate(rfp.passes):
        rows.append((f"pass {k + 1}" + (" (FPN)" if k == 0 else " (recursive)"), pyramid, False))
        if k >= 1:
            rows.append((f"gate, step {k + 1}", rfp.gates[k - 1], True))
    rows.append(("output (fused)", rfp.output, False))
    levels = rfp.levels
    fig, axes = plt.subplots(
        len(rows), len(levels), figsize=(2.6 * len(levels), 2.3 * len(rows)), dpi=DPI, squeeze=False
    )
    for col, name in enumerate(levels):
        activations = [r[1][name] for r in rows if not r[2]]
        vmax = max(float(a.max()) for a in activations) or 1.0
        for row, (title, maps, is_gate) in enumerate(rows):
            ax = axes[row][col]
            data = maps[name]
            shown = ax.imshow(
                data,
                cmap="viridis" if is_gate else "inferno",
                vmin=0.0,
                vmax=1.0 if is_gate else vmax,
                interpolation="nearest",
            )
            extra = f", mean {data.mean():.2f}" if is_gate else ""
            ax.set_title(f"{name}: {title}{extra}", fontsize=8)
            ax.set_axis_off()
            if row == len(rows) - 1 or is_gate:  # activation scales are per level (column)
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(
        "Recursive Feature Pyramid: each pass's pyramid (mean |activation|, one scale per level), "
        "the gate's share of the recursive pass, the fused output",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(plt, fig, path)


def save_image_figures(ins: ImageInspection, out_dir: str | Path) -> list[Path]:
    """Every picture of one inspected image: heat maps, pyramid montage, detections, and the
    bottom-up comparison when the inspection kept bottom-up maps."""
    out = Path(out_dir)
    written = save_heatmaps(ins, out)
    written.append(save_pyramid_montage(ins, out / "pyramid.png"))
    written.append(save_detections(ins, out / "detections.png"))
    if ins.bottom_up:
        compared = save_bottom_up_comparison(ins, out / "bottom_up_vs_top_down.png")
        if compared is not None:
            written.append(compared)
    afp = save_afp_levels(ins, out / "afp_levels.png")
    if afp is not None:
        written.append(afp)
    soft = save_soft_levels(ins, out / "soft_levels.png")
    if soft is not None:
        written.append(soft)
    rfp = save_rfp_steps(ins, out / "rfp_steps.png")
    if rfp is not None:
        written.append(rfp)
    return written


# --------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------


def save_box_size_histogram(report: AnchorFitReport, path: str | Path) -> Path:
    """Histogram of box sizes sqrt(w*h) in the model's input pixels (log scale), stacked by
    the best anchor IoU (positive / usable / none), with Eqn. (1)'s level boundaries (solid)
    and the anchor sizes (dashed, coloured by level) marked."""
    from fpncli.modeling.levels import level_boundaries, level_range

    plt = _plt()
    layout = report.layout
    colours = level_colours(list(layout.levels))
    sizes = report.box_size
    anchors = [s for group in layout.anchor_sizes.values() for s in group]
    low = max(0.5, min(float(sizes.min()), min(anchors)) / 1.5)
    high = max(float(sizes.max()), max(anchors)) * 1.5
    bins = np.geomspace(low, high, 40)
    best = report.best_iou
    groups = [
        (sizes[best >= POSITIVE_IOU], f"positive anchor (IoU >= {POSITIVE_IOU})", "#2ca02c"),
        (
            sizes[(best >= USABLE_IOU) & (best < POSITIVE_IOU)],
            f"usable only ({USABLE_IOU} <= IoU < {POSITIVE_IOU})",
            "#ff7f0e",
        ),
        (sizes[best < USABLE_IOU], f"no usable anchor (IoU < {USABLE_IOU})", "#d62728"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=DPI)
    ax.hist(
        [g[0] for g in groups],
        bins=bins,
        stacked=True,
        label=[g[1] for g in groups],
        color=[g[2] for g in groups],
    )
    ax.set_xscale("log")
    top = ax.get_ylim()[1]
    lo, hi = level_range(layout.levels, layout.roi_levels)
    for name, boundary in level_boundaries(lo, hi):
        ax.axvline(boundary, color="black", linewidth=1)
        ax.text(boundary * 1.03, top * 0.97, f"{name} from {boundary:g}", rotation=90, va="top", fontsize=8)
    for name, group in layout.anchor_sizes.items():
        for size in group:
            ax.axvline(size, color=colours[name], linestyle="--", linewidth=1.5)
            ax.text(
                size * 1.03,
                top * 0.55,
                f"anchor {size} ({name})",
                rotation=90,
                va="top",
                fontsize=8,
                color=colours[name],
            )
    ax.set_xlabel("box size sqrt(w*h), pixels of the resized model input")
    ax.set_ylabel("boxes")
    cfg = layout.config
    ax.set_title(
        f"{report.best_iou.size:,} boxes; input --min-size {cfg.min_size} --max-size {cfg.max_size}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(plt, fig, path)


def save_level_coverage(report: AnchorFitReport, path: str | Path) -> Path:
    """Horizontal bars per level (boxes grouped by Eqn. (1)) and per COCO size bucket: the
    shares of boxes with a positive anchor, a usable one only, and none; box counts at right."""
    plt = _plt()
    rows = [
        (f"{lv['name']} (Eqn. 1)", lv["boxes"], lv["positive"], lv["usable"])
        for lv in report.levels
        if lv["assigned_by_equation"]
    ]
    rows += [(f"{b.name} (COCO area)", b.boxes, b.positive, b.usable) for b in report.buckets]
    rows.append(("all", report.overall.boxes, report.overall.positive, report.overall.usable))
    labels = [r[0] for r in rows]
    n = np.asarray([r[1] for r in rows], dtype=float)
    safe = np.where(n > 0, n, 1)
    positive = np.asarray([r[2] for r in rows]) / safe
    usable_only = (np.asarray([r[3] for r in rows]) - np.asarray([r[2] for r in rows])) / safe
    none = np.where(n > 0, 1 - positive - usable_only, 0)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4), dpi=DPI)
    y = np.arange(len(rows))[::-1]
    ax.barh(y, positive, color="#2ca02c", label="positive anchor (IoU >= 0.7)")
    ax.barh(y, usable_only, left=positive, color="#ff7f0e", label="usable only (0.3 <= IoU < 0.7)")
    ax.barh(y, none, left=positive + usable_only, color="#d62728", label="no usable anchor (IoU < 0.3)")
    for yi, count in zip(y, n):
        ax.text(1.01, yi, f"{int(count):,} boxes", va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1.18)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25 %", "50 %", "75 %", "100 %"])
    ax.set_xlabel("share of boxes")
    ax.set_title("Anchor coverage per level and per size", fontsize=10)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, frameon=False)
    fig.tight_layout()
    return _save(plt, fig, path)


def save_dataset_figures(report: AnchorFitReport, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return [
        save_box_size_histogram(report, out / "box_sizes.png"),
        save_level_coverage(report, out / "coverage.png"),
    ]
