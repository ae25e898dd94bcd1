"""Which of a model's classes a detect run reports (``--classes``)."""

from __future__ import annotations

from collections.abc import Sequence

from fpncli.errors import FpnError


def resolve_classes(
    class_names: Sequence[str], category_ids: Sequence[int], wanted: Sequence[str] | None
) -> set[int]:
    """The model labels (1..K) to report: ``wanted`` names or category ids (comma-separated
    items allowed), or all; placeholder classes (``N/A`` in torchvision's COCO_V1) never."""
    from fpncli.modeling.coco_classes import UNUSED_CLASS

    usable = {i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    if not wanted:
        return usable
    by_name = {name.lower(): i + 1 for i, name in enumerate(class_names) if name != UNUSED_CLASS}
    by_id = {cid: i + 1 for i, cid in enumerate(category_ids) if i + 1 in usable}
    labels: set[int] = set()
    named = False
    for item in wanted:
        for token in (t.strip() for t in str(item).split(",")):
            if not token:
                continue
            named = True
            if token.lower() in by_name:
                labels.add(by_name[token.lower()])
            elif token.lstrip("-").isdigit() and int(token) in by_id:
                labels.add(by_id[int(token)])
            elif token.lower() == UNUSED_CLASS.lower() or (token.isdigit() and int(token) in category_ids):
                raise FpnError(
                    f"--classes: {token!r} is a placeholder class of this model ({UNUSED_CLASS}: "
                    "a category id COCO left unused), which never has detections"
                )
            else:
                examples = ", ".join([n for n in class_names if n != UNUSED_CLASS][:8])
                raise FpnError(
                    f"--classes: {token!r} is neither a class name nor a category id of "
                    f"this model (classes include: {examples}...)"
                )
    if not named:
        # An empty --classes would silently drop every detection.
        raise FpnError(f"--classes: no class given (got {', '.join(repr(str(w)) for w in wanted)})")
    return labels
