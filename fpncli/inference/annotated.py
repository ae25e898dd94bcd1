"""Annotated copies of a detect run's inputs: where each goes, and drawing one to disk.

A copy never replaces an input of the run, another copy, or a file this tool did not write
(see :func:`fpncli.outputs.safe_targets`); it is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpncli.atomic import atomic_write
from fpncli.data.video import stream_output_name
from fpncli.outputs import read_ledger, safe_targets


def output_paths(
    paths: Sequence[Path],
    out_dir: Path,
    streams: Sequence[str] = (),
    reserved: Sequence[Path | str | None] = (),
) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Where the annotated copy of each input file, then of each stream, goes; and the
    copies given another name than the natural one. ``reserved``: the run's other
    inputs and output files.

    A file's copy goes to its path relative to the inputs' common folder, under
    ``out_dir`` (equal names in different folders never collide); a stream's to
    ``out_dir/<stream_output_name>``. A copy never replaces an input of the run
    (``paths`` and ``reserved``), another copy, or a file that ``out_dir``'s ledger does
    not list as ours: it becomes ``<stem>_det<suffix>`` (or ``_det2``, ...) instead, see
    :func:`fpncli.outputs.safe_targets`.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    wanted: list[Path] = []
    if absolute:
        common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
        wanted = [out_dir / p.relative_to(common) for p in absolute]
    wanted += [out_dir / stream_output_name(s) for s in streams]
    others = [Path(p) for p in reserved if p is not None]
    return safe_targets(wanted, [*absolute, *others], owned=read_ledger(out_dir))


def save_annotated(result: Any, target: Path, names: list[str], keys: list[int]) -> None:
    """Draw ``result``'s detections on its pixels and save the picture at ``target``."""
    from PIL import Image

    from fpncli.viz.draw import draw_detections

    image = Image.fromarray(result.image.permute(1, 2, 0).numpy())
    drawn = draw_detections(image, result.boxes.tolist(), names, result.scores.tolist(), keys)
    fmt = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    params = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    # Atomic: a full disk or a kill leaves no partial picture and no temporary behind.
    atomic_write(target, lambda f: drawn.save(f, format=fmt, **params), binary=True, clean_stale=False)
