"""What every converter of ``fpn data convert`` shares: the dataset in between formats, the
problem list, image sizes and placing images in the output.

A reader (:mod:`.voc`, :mod:`.yolo`, :mod:`.coco_in`) turns a folder into a
:class:`Dataset`; a writer (:mod:`.coco_out`, :mod:`.yolo_out`) turns a :class:`Dataset` into
a folder. Boxes in between are ``[x1, y1, x2, y2]`` in continuous pixel coordinates, COCO's
convention: the image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` (0-based) covers
``[i, i + 1] x [j, j + 1]``.

Bad input never stops a conversion: each bad box, label line, XML file or image is one line
in :class:`Problems` (``file:line: what is wrong``) and is skipped; everything else is converted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from fpncli.errors import FpnError

# Called as progress(what, done, total) after each image read or written.
Progress = Callable[[str, int, int], None]
IMAGE_MODES = ("link", "copy")
# EXIF orientations that swap width and height (90 / 270 degree rotations, transposes).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class Box:
    """One object: ``xyxy`` in continuous pixel coordinates (see the module docstring);
    ``category`` indexes :attr:`Dataset.names`; ``iscrowd``: a crowd region (COCO) or a VOC
    ``difficult`` object kept as one; ``difficult``: VOC's flag, kept as is."""

    xyxy: tuple[float, float, float, float]
    category: int
    iscrowd: bool = False
    difficult: bool = False


@dataclass
class Item:
    """One image of a split: its ``source`` file, its ``name`` inside the output split folder
    (a relative POSIX path), its upright size in pixels and its boxes."""

    source: Path
    name: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


@dataclass
class Dataset:
    """A dataset between formats: class ``names`` (0-based class index = position), their COCO
    ``category_ids`` (same length), and ``splits`` (split name -> images)."""

    names: list[str]
    category_ids: list[int]
    splits: dict[str, list[Item]]


@dataclass
class Problems:
    """What was wrong with the input: one line per problem (``where: what``), and counters
    of things repaired or left out that are not errors (``notes``: clipped boxes, crowd
    regions a format cannot hold, images without labels ...)."""

    lines: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, where: str | os.PathLike, what: str, line: int | None = None) -> None:
        place = f"{where}:{line}" if line is not None else str(where)
        self.lines.append(f"{place}: {what}")

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] += n

    def __len__(self) -> int:
        return len(self.lines)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the image as viewers show it (EXIF rotation applied, as
    :func:`fpncli.data.images.read_image` does), from the file's header: nothing is decoded.

    Raises:
        FpnError: ``"<path>: <reason>"`` when the file is missing or not a readable image.
    """
    try:
        if path.stat().st_size == 0:
            raise FpnError(f"{path}: empty file (0 bytes)")
        with PILImage.open(path) as im:
            width, height = im.size
            try:
                orientation = im.getexif().get(0x0112)
            except Exception:  # a broken EXIF block does not make the pixels unreadable
                orientation = None
    except FpnError:
        raise
    except FileNotFoundError:
        raise FpnError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise FpnError(f"{path}: not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FpnError(f"{path}: cannot read the image ({str(exc).strip() or type(exc).__name__})") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return width, height


def clip_box(
    xyxy: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float], bool]:
    """``xyxy`` clipped to ``[0, width] x [0, height]``, and whether more than 0.001 px was
    cut off (less is rounding in the source, e.g. 6-decimal YOLO labels: not worth a note)."""
    x1, y1, x2, y2 = xyxy
    clipped = (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )
    return clipped, any(abs(a - b) > 1e-3 for a, b in zip(clipped, xyxy))


def add_box(
    item: Item, box: Box, problems: Problems, where: str | os.PathLike, line: int | None = None
) -> None:
    """Append ``box`` to ``item`` clipped to the image; a box with nothing inside the image
    (zero or negative width or height after clipping) is a problem and left out."""
    xyxy, clipped = clip_box(box.xyxy, item.width, item.height)
    if xyxy[2] - xyxy[0] <= 0 or xyxy[3] - xyxy[1] <= 0:
        x1, y1, x2, y2 = box.xyxy
        problems.add(
            where,
            f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (xyxy px) has no area inside the "
            f"{item.width}x{item.height} image; skipped",
            line,
        )
        return
    if clipped:
        problems.note("boxes clipped to the image")
    box.xyxy = xyxy
    item.boxes.append(box)


def check_folders(src: Path, out: Path) -> None:
    """Refuse an output folder that is the source folder, inside it or around it: converting
    must never write over (or into) its input."""
    a, b = Path(os.path.realpath(src)), Path(os.path.realpath(out))
    if a == b or a in b.parents or b in a.parents:
        raise FpnError(
            f"{out}: the output folder must not be the source folder {src}, inside it or contain it"
        )


def place_image(source: Path, dest: Path, mode: str) -> None:
    """Put ``source`` at ``dest``: a symbolic link to its absolute path (``link``) or a copy
    (``copy``). Whatever was at ``dest`` is replaced, never written through: a link left by
    an earlier run is replaced by the new file, its target (a source image) is left alone."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        if mode == "link":
            os.symlink(os.path.abspath(source), tmp)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_small(path: Path, text: str) -> None:
    """Write a small output file through a temporary name (never half-written; not synced to
    disk one by one, which would make a 100k-file label folder crawl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def split_names(splits: dict[str, list[Item]]) -> list[str]:
    """Split names in a stable, familiar order: train first, then val, test, the rest sorted."""
    order = {"train": 0, "trainval": 1, "val": 2, "test": 3}
    return sorted(splits, key=lambda s: (order.get(s, 9), s))
