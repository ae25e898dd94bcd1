"""Sliced inference and test-time augmentation: several views of one image, one set of detections.

A *view* is a window of the image (the whole image, or one tile), possibly mirrored left to
right, resized by the model's own transform to one shorter side (the model's own, or a
test-time scale). Each view goes through the unchanged detector; its boxes are mapped back
to the image (un-mirrored, shifted by the window's corner) and all views' detections are
merged by class-wise NMS (``torchvision.ops.batched_nms`` at the model's own NMS IoU), best
``detections_per_img`` kept.

* ``--slice SIZE --slice-overlap F`` (SAHI-style): SIZE x SIZE tiles overlapping by F of
  their side, each passed through the model's transform like a whole image (so a 512 px
  tile of a 4000 px photo is seen at the model's input scale, and its small objects become
  large), plus one pass over the whole image for the objects larger than a tile. A tile's
  boxes that touch one of its edges inside the image are dropped: objects the tile cuts,
  seen whole by a neighbour or the whole-image pass (measured better than keeping them,
  see the README). A tile that covers the whole image *is* the whole-image pass: the
  result is exactly plain detection's.
* ``--tta flip,scales=S1:S2...``: every window also mirrored, and at each shorter side
  S (pixels, or a factor of the model's own when below 16).

:class:`AugmentedDetector` wraps a detector behind the inference API the pipeline uses
(``prepare_image``, ``padded_size``, ``detect_prepared``, ``size_problem``), so
:func:`~fpncli.inference.predict.predict_images`, its CPU worker processes and the torchrun
sharding run it unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fpncli.errors import FpnError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from fpncli.modeling.detector import FPNFasterRCNN

TTA_HELP = "flip, scales=S1:S2... (shorter sides in pixels, or factors of the model's below 16)"
# Test-time scale values below this are factors of the model's own shorter side.
_FACTOR_BELOW = 16
# A tile's box this close (pixels) to one of its inner edges is a cut object.
_CUT_MARGIN = 2.0
# Views per forward pass (only views of equal padded size share one).
_VIEW_BATCH = 4
# Views (tiles x scales x flips) of one image beyond which the settings are absurd: a 4000 px
# photo in 512 px tiles at 0.2 overlap is 80 tiles, 480 views with flip and 3 scales.
MAX_VIEWS = 4096
DEFAULT_SLICE_OVERLAP = 0.2


@dataclass(frozen=True)
class SliceSpec:
    """Tiles of ``size`` x ``size`` pixels overlapping by ``overlap`` of their side."""

    size: int
    overlap: float = 0.2


@dataclass(frozen=True)
class TTASpec:
    """Mirror every view (``flip``) and run it at each shorter side of ``scales`` (empty: the
    model's own; values below 16 are factors of it)."""

    flip: bool = False
    scales: tuple[float, ...] = ()


def check_slice(size: int | None, overlap: float | None = None) -> SliceSpec | None:
    """The slicing options as a spec (None without ``--slice``); one-line error when out of
    range, when ``--slice-overlap`` comes without ``--slice`` (it would do nothing), or when
    the tiles are so dense that an image of two tiles' side would need over
    :data:`MAX_VIEWS` of them."""
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise FpnError(f"--slice-overlap must be in [0, 1), got {overlap}")
    if size is None:
        if overlap is not None:
            raise FpnError("--slice-overlap has no effect without --slice SIZE")
        return None
    if size < 1:
        raise FpnError(f"--slice must be at least 1 pixel, got {size}")
    spec = SliceSpec(int(size), DEFAULT_SLICE_OVERLAP if overlap is None else float(overlap))
    tiles = tile_count(2 * spec.size, 2 * spec.size, spec.size, spec.overlap)
    if tiles > MAX_VIEWS:
        raise FpnError(
            f"--slice {spec.size} --slice-overlap {spec.overlap:g}: an image of {2 * spec.size} px "
            f"would already take {tiles:,} tiles (at most {MAX_VIEWS:,} views per image); "
            f"use a smaller --slice-overlap"
        )
    return spec


def parse_tta(text: str | None) -> TTASpec | None:
    """``"flip,scales=600:800:1000"`` -> :class:`TTASpec`; None for None or ``"none"``.

    Raises:
        FpnError: an unknown item, a bad or repeated scale, or nothing given.
    """
    if text is None or text.strip().lower() == "none":
        return None
    flip = False
    scales: tuple[float, ...] = ()
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise FpnError(f"--tta: nothing given (got {text!r}); use {TTA_HELP}")
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key in ("flip", "hflip") and not value:
            flip = True
        elif key == "scales" and value:
            try:
                scales = tuple(float(v) for v in value.split(":"))
            except ValueError:
                raise FpnError(f"--tta: scales must be numbers separated by ':', got {value!r}") from None
            if not all(s > 0 and s == s and s != float("inf") for s in scales):
                raise FpnError(f"--tta: scales must be positive numbers, got {value!r}")
        else:
            raise FpnError(f"--tta: unknown item {item!r}; use {TTA_HELP}")
    if not flip and not scales:
        raise FpnError(f"--tta: nothing to augment in {text!r}; use {TTA_HELP}")
    return TTASpec(flip, scales)


def _tile_stride(size: int, overlap: float) -> int:
    return max(1, int(size * (1.0 - overlap)))


def tile_count(width: int, height: int, size: int, overlap: float) -> int:
    """``len(tile_windows(...))``, computed without making the windows."""

    def per_side(length: int) -> int:
        return 1 if length <= size else -(-(length - size) // _tile_stride(size, overlap)) + 1

    return per_side(width) * per_side(height)


def tile_windows(width: int, height: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` tiles of ``size`` px covering a ``width`` x ``height`` image,
    neighbours overlapping by at least ``overlap`` of ``size``; the last row and column are
    flush with the far edges (never outside the image), and a side shorter than ``size``
    is one tile wide."""

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        out = list(range(0, length - size, _tile_stride(size, overlap)))
        return [*out, length - size]

    return [
        (x, y, min(x + size, width), min(y + size, height)) for y in starts(height) for x in starts(width)
    ]


@dataclass(frozen=True)
class View:
    """One pass of the detector: a window ``(x1, y1, x2, y2)``, mirrored or not, at a shorter side
    (None: the model's own)."""

    window: tuple[int, int, int, int]
    flip: bool = False
    min_size: int | None = None


def plan_views(
    width: int,
    height: int,
    model_min_size: int,
    slicing: SliceSpec | None = None,
    tta: TTASpec | None = None,
) -> list[View]:
    """Every view of a ``width`` x ``height`` image: the whole image, the tiles (slicing), each
    at every test-time scale, each also mirrored (flip). The first view is the plain one when
    the plain pass is among them."""
    full = (0, 0, width, height)
    windows = [full]
    if slicing is not None:
        windows += [w for w in tile_windows(width, height, slicing.size, slicing.overlap) if w != full]
    sizes = scale_sizes(model_min_size, tta)
    flips = [False, True] if tta is not None and tta.flip else [False]
    return [View(w, f, s) for w in windows for s in sizes for f in flips]


def scale_sizes(model_min_size: int, tta: TTASpec | None) -> list[int | None]:
    """The distinct shorter sides the views are run at (None: the model's own)."""
    if tta is None or not tta.scales:
        return [None]
    sizes: list[int | None] = []
    for s in tta.scales:
        pixels = round(model_min_size * s) if s < _FACTOR_BELOW else round(s)
        value = None if pixels == model_min_size else max(1, pixels)
        if value not in sizes:
            sizes.append(value)
    return sizes


def view_count(
    width: int, height: int, model_min_size: int, slicing: SliceSpec | None, tta: TTASpec | None
) -> int:
    """``len(plan_views(...))``, computed without making the views."""
    windows = 1
    if slicing is not None:
        tiles = tile_count(width, height, slicing.size, slicing.overlap)
        windows = 1 if tiles == 1 else 1 + tiles  # one tile covering the image is the image
    flips = 2 if tta is not None and tta.flip else 1
    return windows * len(scale_sizes(model_min_size, tta)) * flips


def merge_detections(parts: list[dict[str, Tensor]], iou: float, limit: int) -> dict[str, Tensor]:
    """Class-wise NMS over the detections of several views (all in image pixels), best first,
    at most ``limit``. One part is returned as it is."""
    import torch
    from torchvision.ops import batched_nms

    if len(parts) == 1:
        return parts[0]
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # per-detection tensors
    keep = batched_nms(merged["boxes"].float(), merged["scores"].float(), merged["labels"], iou)[:limit]
    return {k: v[keep] for k, v in merged.items()}


class AugmentedDetector:
    """A detector seen through several views per image (see the module docstring).

    It offers the inference API of :class:`~fpncli.modeling.detector.FPNFasterRCNN` that
    :func:`~fpncli.inference.predict.predict_images` uses: ``prepare_image`` only converts
    (the views are made from the full image in ``detect_prepared``), so the pipeline,
    its workers and torchrun sharding need no change. (Not an ``nn.Module``: this module
    stays importable without torch, for checking options before a run.)
    """

    def __init__(
        self,
        model: FPNFasterRCNN,
        slicing: SliceSpec | None = None,
        tta: TTASpec | None = None,
        drop_cut: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.drop_cut = drop_cut
        self.slicing = slicing
        self.tta = tta

    @property
    def config(self) -> Any:
        return self.model.config

    def eval(self) -> AugmentedDetector:
        self.model.eval()
        return self

    def to(self, device: Any) -> AugmentedDetector:
        self.model.to(device)
        return self

    def size_problem(self, width: int, height: int) -> str | None:
        """The model's own reason, or too many views for this image (see :data:`MAX_VIEWS`)."""
        problem = self.model.size_problem(width, height)
        if problem is not None:
            return problem
        views = view_count(width, height, self.model.min_size, self.slicing, self.tta)
        if views > MAX_VIEWS:
            return (
                f"{views:,} views of a {width}x{height} image (tiles x scales x flips) are over the "
                f"limit of {MAX_VIEWS:,}; use a larger --slice or a smaller --slice-overlap"
            )
        if self.max_pixels is not None:
            from fpncli.data.images import resized_size

            model = self.model
            for side in scale_sizes(model.min_size, self.tta):
                if side is None:
                    continue
                w, h = resized_size(width, height, side, round(model.max_size * side / model.min_size))
                if w * h > self.max_pixels:
                    return (
                        f"at the test-time scale {side} the {width}x{height} image becomes {w}x{h} "
                        f"pixels, over the limit of {self.max_pixels:,} (--max-pixels)"
                    )
        return None

    def prepare_image(self, image: Tensor, inplace: bool = False) -> Tensor:
        """``Tensor[3, H, W]`` float 0..1, kept as it is: every view is prepared from it."""
        return image

    def padded_size(self, prepared: Tensor) -> tuple[int, int]:
        return int(prepared.shape[-2]), int(prepared.shape[-1])

    def views(self, width: int, height: int) -> list[View]:
        return plan_views(width, height, self.model.min_size, self.slicing, self.tta)

    def detect_prepared(
        self, prepared: list[Tensor], original_sizes: list[tuple[int, int]], half: bool = False
    ) -> list[dict[str, Tensor]]:
        """Per image (``Tensor[3, H, W]`` float 0..1 on the model's device) the merged detections
        of all its views: ``{"boxes": Tensor[M, 4] xyxy image pixels, "scores", "labels"}``."""
        return [self.detect_image(image, half=half) for image in prepared]

    def detect_image(self, image: Tensor, half: bool = False) -> dict[str, Tensor]:
        """The merged detections of one image (``Tensor[3, H, W]`` float 0..1)."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        # plan_views always gives at least the plain view: parts is never empty.
        parts = [out for _, out in self._run_views(image, self.views(width, height), half)]
        return merge_detections(parts, self.model.nms_thresh, self.model.detections_per_img)

    def _run_views(self, image: Tensor, views: list[View], half: bool) -> Iterator[tuple[View, dict]]:
        """Each view's detections in image pixels; views of equal padded size share a forward
        pass (equal padding: the same result as alone), built lazily so that a photo with
        hundreds of tiles never holds them all."""
        model = self.model
        height, width = int(image.shape[-2]), int(image.shape[-1])
        batch: list[tuple[View, Tensor]] = []
        key: tuple[int, int] | None = None

        def run() -> Iterator[tuple[View, dict]]:
            sizes = [(v.window[3] - v.window[1], v.window[2] - v.window[0]) for v, _ in batch]
            outs = model.detect_prepared([p for _, p in batch], sizes, half=half)
            for (view, _), out in zip(batch, outs):
                yield view, _to_image(out, view, (width, height) if self.drop_cut else None)
            batch.clear()

        for view in views:
            x1, y1, x2, y2 = view.window
            crop = image[:, y1:y2, x1:x2]
            if view.flip:
                crop = crop.flip(-1)
            prepared = model.prepare_image(crop, min_size=view.min_size)
            k = model.padded_size(prepared)
            if batch and (k != key or len(batch) >= _VIEW_BATCH):
                yield from run()
            key = k
            batch.append((view, prepared))
        if batch:
            yield from run()


def _to_image(
    out: dict[str, Tensor], view: View, image_size: tuple[int, int] | None = None
) -> dict[str, Tensor]:
    """A view's detections (xyxy in the window's pixels) -> the image's pixels.

    ``image_size`` (W, H): also drop a tile's boxes that touch one of its edges inside the
    image: those are objects the tile cuts, seen whole by a neighbour or the whole-image pass.
    """
    import torch

    x1, y1, x2, y2 = view.window
    boxes = out["boxes"]
    if view.flip:
        boxes = boxes[:, [2, 1, 0, 3]] * boxes.new_tensor([-1.0, 1.0, -1.0, 1.0]) + boxes.new_tensor(
            [x2 - x1, 0.0, x2 - x1, 0.0]
        )
    out = {**out, "boxes": boxes}
    if image_size is not None and (x1, y1, x2, y2) != (0, 0, *image_size):
        m = _CUT_MARGIN
        cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
        if x1 > 0:
            cut |= boxes[:, 0] <= m
        if y1 > 0:
            cut |= boxes[:, 1] <= m
        if x2 < image_size[0]:
            cut |= boxes[:, 2] >= x2 - x1 - m
        if y2 < image_size[1]:
            cut |= boxes[:, 3] >= y2 - y1 - m
        out = {k: v[~cut] for k, v in out.items()}
    if x1 or y1:
        out["boxes"] = out["boxes"] + out["boxes"].new_tensor([x1, y1, x1, y1])
    return out


def augmented(
    model: Any, slicing: SliceSpec | None, tta: TTASpec | None, max_pixels: int | None = None
) -> Any:
    """``model`` itself when neither slicing nor TTA is asked for, else its :class:`AugmentedDetector`.

    Raises:
        FpnError: a test-time scale whose shorter side alone, squared, is over ``max_pixels``
            (the image limit, default :func:`~fpncli.data.images.default_max_pixels`): every
            view at that scale would be refused, or exhaust memory.
    """
    if slicing is None and tta is None:
        return model
    from fpncli.modeling.exported import ExportedDetector

    if isinstance(model, ExportedDetector):
        # The exported graph resizes inside itself and takes whole images: tiles and scales
        # would need a graph per input scale.
        raise FpnError(
            "--slice and --tta need the PyTorch checkpoint; an exported model runs plain detection"
        )
    from fpncli.data.images import default_max_pixels

    limit = max_pixels if max_pixels is not None else default_max_pixels()
    if tta is not None:
        for side in scale_sizes(model.min_size, tta):
            if side is not None and side * side > limit:
                raise FpnError(
                    f"--tta scales: a {side:,} px shorter side is at least {side * side:,} pixels "
                    f"per view, over the limit of {limit:,} (--max-pixels); use smaller scales"
                )
    return AugmentedDetector(model, slicing, tta, max_pixels=limit)
