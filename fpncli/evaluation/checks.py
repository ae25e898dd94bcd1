"""What an evaluation is given, checked: a results list, a ground-truth file, a model's categories.

Entries that cannot be evaluated are skipped and reported (grouped by kind, first example
named); inputs where nothing can be evaluated are a one-line :class:`FpnError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fpncli.data.coco import CocoAnnotations, load_coco, read_json
from fpncli.errors import FpnError

MAX_LISTED = 50  # per-entry lines kept in metrics.json; the count is always exact


class _Problems:
    """Skipped entries grouped by kind: one line per kind with the count and the first example,
    plus up to MAX_LISTED per-entry lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.kinds: dict[str, list[Any]] = {}  # kind -> [count, first entry description]
        self.entries: list[str] = []

    def add(self, kind: str, entry: str) -> None:
        slot = self.kinds.setdefault(kind, [0, entry])
        slot[0] += 1
        if len(self.entries) < MAX_LISTED:
            self.entries.append(f"{self.source}: {entry}: {kind}")

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {n} {'entry' if n == 1 else 'entries'} skipped, {kind} (first: {first})"
            for kind, (n, first) in self.kinds.items()
        ]

    def count(self) -> int:
        return sum(n for n, _ in self.kinds.values())


def counted(n: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


_NUMBER = (int, float)  # exact types: bool is an int subclass but not a coordinate


def _finite_number(v: Any) -> bool:
    return type(v) in _NUMBER and v - v == 0  # inf - inf and nan - nan are nan


def _valid_box(box: Any) -> bool:
    # Unrolled: this runs once per detection (hundreds of thousands on COCO val).
    return (
        type(box) in (list, tuple)
        and len(box) == 4
        and _finite_number(box[0])
        and _finite_number(box[1])
        and _finite_number(box[2])
        and _finite_number(box[3])
    )


@dataclass
class GroundTruth:
    """An annotation file, checked, and the dataset the COCOeval backends index."""

    coco: CocoAnnotations
    dataset: dict[str, Any]  # what the backends index: the file, minus skipped annotations
    notes: list[str] = field(default_factory=list)


def load_ground_truth(annotation_file: str | os.PathLike) -> GroundTruth:
    """Check an annotation file (:func:`load_coco`) and prepare it for COCOeval.

    Annotations load_coco skips (unknown image/category, no usable bbox) could never be
    evaluated anyway; everything else is kept exactly as in the file so the numbers equal
    pycocotools' on the same file. Fields COCOeval needs but the file lacks are filled in
    the way COCO's own result loader does (``area`` = w*h, ``iscrowd`` = 0, fresh ``id``).
    """
    coco = load_coco(annotation_file)
    src = str(coco.path)
    kept = {id(a) for anns in coco.annotations.values() for a in anns}
    anns = [(i, a) for i, a in enumerate(coco.raw["annotations"]) if id(a) in kept]  # (index in file, ann)
    next_id = max((a["id"] for _, a in anns if type(a.get("id")) is int), default=0) + 1
    filled: dict[str, list[Any]] = {}  # what was filled in -> [count, first annotation]
    degenerate: list[Any] = [0, None]  # [count, first annotation id]
    seen_ids: set[Any] = set()
    out = []
    for index, a in anns:
        missing = [k for k in ("area", "iscrowd") if k not in a]
        # pycocotools indexes annotations by id: a duplicate id would silently replace the
        # first annotation in the evaluation, so duplicates get a fresh id too.
        new_id = "id" not in a or a["id"] in seen_ids
        if missing or new_id:
            a = dict(a)
            for key in missing + (["id" if "id" not in a else "duplicate id"] if new_id else []):
                filled.setdefault(key, [0, f"annotations[{index}]"])[0] += 1
            if "area" in missing:
                a["area"] = a["bbox"][2] * a["bbox"][3]
            if "iscrowd" in missing:
                a["iscrowd"] = 0
            if new_id:
                a["id"], next_id = next_id, next_id + 1
        seen_ids.add(a["id"])
        if (a["bbox"][2] <= 0 or a["bbox"][3] <= 0) and not a.get("iscrowd"):
            degenerate[0] += 1
            degenerate[1] = degenerate[1] or f"id {a['id']}"
        out.append(a)
    dataset = dict(coco.raw)
    dataset["annotations"] = out
    dataset.setdefault("info", {})
    notes = list(coco.problems[:MAX_LISTED])
    if len(coco.problems) > MAX_LISTED:
        notes.append(f"{src}: ... and {len(coco.problems) - MAX_LISTED} more skipped annotations")
    for key, (n, first) in filled.items():
        what = {
            "area": "no 'area'; used w*h of its bbox",
            "iscrowd": "no 'iscrowd'; used 0",
            "id": "no 'id'; gave a fresh id",
            "duplicate id": "an id used before; gave a fresh id",
        }[key]
        notes.append(
            f"{src}: {counted(n, 'annotation')} {'has' if n == 1 else 'have'} {what} (first: {first})"
        )
    if degenerate[0]:
        n = degenerate[0]
        notes.append(
            f"{src}: {counted(n, 'annotation')} {'has' if n == 1 else 'have'} a zero or negative "
            f"size box; as in COCO it stays ground truth no detection can match (first: {degenerate[1]})"
        )
    return GroundTruth(coco, dataset, notes)


def check_results(
    results: str | os.PathLike | Sequence[Any], gt: CocoAnnotations
) -> tuple[list[dict], list[str], str]:
    """Validate COCO results; returns (usable detections as fresh dicts, problem lines, source name).

    A detection needs ``image_id`` and ``category_id`` known to the annotation file, a
    ``bbox`` of 4 finite numbers ``[x, y, w, h]`` and a finite ``score``. Others are skipped
    and reported. When not one of a non-empty list is usable, that is an error: a results file
    whose ids match nothing is almost always the wrong file or labels written instead of ids.
    """
    if isinstance(results, (str, os.PathLike)):
        source = str(results)
        data = read_json(results)
    else:
        source, data = "results", results
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]  # a whole COCO-style file was given: take its detections
    if not isinstance(data, list):
        raise FpnError(
            f"{source}: expected a JSON list of detections "
            '({"image_id", "category_id", "bbox": [x, y, w, h], "score"})'
        )
    problems = _Problems(source)
    images, cats = gt.images, gt.categories.id_to_label
    dets: list[dict] = []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            problems.add("not a JSON object", f"[{i}]")
            continue
        img, cat, box, score = d.get("image_id"), d.get("category_id"), d.get("bbox"), d.get("score")
        if img not in images:
            problems.add(f"image_id not in {gt.path.name}", f"[{i}] image_id {img!r}")
        elif cat not in cats:
            problems.add(f"category_id not in {gt.path.name}", f"[{i}] category_id {cat!r}")
        elif not _valid_box(box):
            problems.add("bbox is not 4 numbers [x, y, w, h]", f"[{i}] bbox {box!r}")
        elif not _finite_number(score):
            problems.add("score is missing or not a number", f"[{i}] score {score!r}")
        else:
            dets.append({"image_id": img, "category_id": cat, "bbox": list(box or ()), "score": score})
    if data and not dets:
        kinds = problems.kinds
        hint = ""
        if any(k.startswith("category_id") for k in kinds) and len(kinds) == 1:
            used = sorted({d.get("category_id") for d in data if isinstance(d, dict)}, key=str)[:8]
            hint = (
                f"; the results use category ids {used} but {gt.path.name} has "
                f"{gt.categories.category_ids[:8]}{'...' if len(gt.categories) > 8 else ''}: "
                "were contiguous labels written instead of dataset category ids?"
            )
        first = next(iter(kinds.items()))
        raise FpnError(
            f"{source}: none of its {len(data)} detections can be evaluated against "
            f"{gt.path}: {first[0]} (first: {first[1][1]}){hint}"
        )
    return dets, problems.lines() + (problems.entries if problems.count() > 1 else []), source


def check_category_mapping(
    category_ids: Sequence[int], class_names: Sequence[str], coco: CocoAnnotations
) -> list[str]:
    """Compare a model's categories with a dataset's; returns notes, raises when none match.

    Ids are what count (names are only compared to warn): a model whose category ids share
    nothing with the dataset cannot be evaluated on it. torchvision's "N/A" slots are ignored.
    """
    from fpncli.modeling.coco_classes import UNUSED_CLASS  # model mode only: torch is loaded already

    dataset = dict(zip(coco.categories.category_ids, coco.categories.names))
    model = {cid: name for cid, name in zip(category_ids, class_names) if name != UNUSED_CLASS}
    shared = [cid for cid in model if cid in dataset]
    if not shared:
        raise FpnError(
            f"the model's category ids ({_ids(model)}) share none with {coco.path} "
            f"({_ids(dataset)}); was it trained on another dataset?"
        )
    notes = []
    renamed = [cid for cid in shared if model[cid].lower() != dataset[cid].lower()]
    if renamed:
        cid = renamed[0]
        notes.append(
            f"{len(renamed)} category ids have other names in the model than in {coco.path.name} "
            f"(first: id {cid} is {model[cid]!r} in the model, {dataset[cid]!r} in the file)"
        )
    unknown = [cid for cid in dataset if cid not in model]
    if unknown:
        notes.append(
            f"{len(unknown)} of the {len(dataset)} categories of {coco.path.name} are not among the model's classes "
            f"(AP 0 where they have instances; first: id {unknown[0]} {dataset[unknown[0]]!r})"
        )
    return notes


def _ids(mapping: dict[int, Any]) -> str:
    ids = sorted(mapping)
    return ", ".join(map(str, ids[:6])) + (", ..." if len(ids) > 6 else "")
