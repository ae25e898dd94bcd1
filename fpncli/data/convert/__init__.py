"""``fpn data convert``: Pascal VOC, YOLO and COCO datasets into COCO or YOLO.

:func:`convert` reads the source into a :class:`~.common.Dataset` (:mod:`.voc`, :mod:`.yolo`,
:mod:`.coco_in`), then writes it (:mod:`.coco_out`, :mod:`.yolo_out`). Bad input is skipped
and counted, never fatal: each bad label line, XML file or image is one line in
:attr:`ConvertSummary.problems`, everything else is converted and written, and the caller
exits non-zero when there were problems. Only what makes the whole source unusable (no
such folder, no class names, a YAML that does not parse) stops before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpncli.data.convert.common import IMAGE_MODES, Problems, Progress, check_folders
from fpncli.errors import FpnError
from fpncli.outputs import check_outputs

SOURCES = ("voc", "yolo", "coco")
TARGETS = ("coco", "yolo")
PROBLEMS_FILE = "convert_problems.txt"


@dataclass
class ConvertSummary:
    """What :func:`convert` did: per split ``{"images", "boxes", "crowd", "file"}``, the class
    names, the problems (one line each) and the counted notes."""

    source: Path
    out: Path
    fmt_from: str
    fmt_to: str
    names: list[str]
    splits: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    problems_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "out": str(self.out),
            "from": self.fmt_from,
            "to": self.fmt_to,
            "classes": self.names,
            "splits": self.splits,
            "problems": self.problems,
            "notes": self.notes,
            "problems_file": None if self.problems_file is None else str(self.problems_file),
        }


def parse_classes(text: str | None) -> list[str] | None:
    """``--classes``: ``a,b,c`` or a text file with one name per line (None: from the data)."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise FpnError(f"--classes: no class names in {text!r}")
    if len(set(names)) != len(names):
        raise FpnError(f"--classes: a class is named twice in {text!r}")
    return names


def convert(
    src: str | os.PathLike,
    fmt_from: str,
    fmt_to: str,
    out: str | os.PathLike,
    images: str = "link",
    difficult: str = "iscrowd",
    classes: list[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ConvertSummary:
    """Convert the dataset at ``src`` (format ``fmt_from``) into ``out`` (format ``fmt_to``).

    ``images``: ``link`` (symbolic links to the source images) or ``copy``; ``difficult``:
    VOC's difficult objects as ``iscrowd``, ``keep`` or ``drop`` (see :mod:`.voc`);
    ``classes``: fixed class names and order (VOC, YOLO without a YAML).

    Raises:
        FpnError: bad options, a source that cannot be read at all, an output that overlaps
            the source or already holds a converted dataset (without ``overwrite``).
    """
    src, out = Path(src), Path(out)
    if fmt_from not in SOURCES:
        raise FpnError(f"--from: expected one of {', '.join(SOURCES)}, got {fmt_from!r}")
    if fmt_to not in TARGETS:
        raise FpnError(f"--to: expected one of {', '.join(TARGETS)}, got {fmt_to!r}")
    if fmt_from == fmt_to:
        raise FpnError(f"--from and --to are both {fmt_from}: nothing to convert")
    if images not in IMAGE_MODES:
        raise FpnError(f"--images: expected link or copy, got {images!r}")
    if not src.exists():
        raise FpnError(f"{src}: no such folder")
    check_folders(src if src.is_dir() else src.parent, out)
    marker = out / ("data.yaml" if fmt_to == "yolo" else "annotations")
    check_outputs(folders=[out], files=[out / "data.yaml"] if fmt_to == "yolo" else [], inputs=[src])
    if marker.exists() and not overwrite and (fmt_to == "yolo" or any(marker.glob("instances_*.json"))):
        raise FpnError(f"{marker}: a converted dataset is already there; pass --overwrite to replace it")
    problems = Problems()
    if fmt_from == "voc":
        from fpncli.data.convert.voc import read_voc

        ds = read_voc(src, problems, difficult=difficult, classes=classes, progress=progress)
    elif fmt_from == "yolo":
        from fpncli.data.convert.yolo import read_yolo

        ds = read_yolo(src, problems, classes=classes, progress=progress)
    else:
        from fpncli.data.convert.coco_in import read_coco

        ds = read_coco(src, problems, progress=progress)
    if not any(ds.splits.values()):
        problems.add(src, "no image could be converted")
    out.mkdir(parents=True, exist_ok=True)
    if fmt_to == "coco":
        from fpncli.data.convert.coco_out import write_coco

        splits = write_coco(ds, out, images=images, source=f"{fmt_from} {src}", progress=progress)
    else:
        from fpncli.data.convert.yolo_out import write_yolo

        splits = write_yolo(ds, out, problems, images=images, progress=progress)
    summary = ConvertSummary(
        src, out, fmt_from, fmt_to, ds.names, splits, problems.lines, dict(problems.notes)
    )
    stale = out / PROBLEMS_FILE
    if problems.lines:
        from fpncli.atomic import write_text

        summary.problems_file = write_text(stale, "".join(line + "\n" for line in problems.lines))
    elif stale.is_file():
        stale.unlink()  # an earlier run's list no longer describes this output
    return summary
