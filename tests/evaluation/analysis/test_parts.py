"""The confusion matrix, COCO's error curves (equal to MMDetection's one-COCOeval-per-class
construction), per-image AP and the error rows."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fpncli.evaluation.analysis.arrays import pack
from fpncli.evaluation.analysis.confusion import confusion_matrix
from fpncli.evaluation.analysis.error_curves import error_curves, error_curves_cocoeval
from fpncli.evaluation.analysis.tide import tide
from fpncli.evaluation.analysis.worst_images import (
    CSV_FIELDS,
    error_rows,
    per_image_ap,
    rows_to_csv,
    worst_images,
)
from fpncli.evaluation.coco_eval import run_cocoeval
from tests.evaluation.analysis.test_tide import _box, _dataset, _det
from tests.evaluation.analysis.tide_reference import perturbed


def test_confusion_matrix_counts_each_case_once():
    data = _dataset(
        [(1, 1, _box(10, 10)), (1, 2, _box(100, 10)), (1, 3, _box(10, 100)), (2, 1, _box(50, 50, 60, 60), 1)]
    )
    dets = [
        _det(1, 1, _box(10, 10), 0.9),  # right: [c1, c1]
        _det(1, 1, _box(11, 10), 0.8),  # a second box on the same object: a false positive
        _det(1, 3, _box(100, 10), 0.7),  # c2 taken for c3: [c2, c3]
        _det(1, 2, _box(150, 150), 0.6),  # on nothing: [background, c2]
        _det(1, 2, _box(150, 150), 0.1),  # below the score threshold: not counted
        _det(2, 1, _box(60, 60), 0.9),  # inside a crowd region: not counted
    ]
    c = confusion_matrix(pack(data, dets), [1, 2, 3], ["c1", "c2", "c3"], 0.3, 0.5)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1
    expected[1, 2] = 1
    expected[3, 0] = 1
    expected[3, 1] = 1
    expected[2, 3] = 1  # c3's object was missed
    assert c.matrix.tolist() == expected.tolist()
    out = c.to_json()
    assert out["top_confusions"] == [{"true": "c2", "predicted": "c3", "count": 1, "share_of_true": 1.0}]
    assert out["false_positives"] == 2 and out["missed"] == 1
    assert out["labels"][-1] == "background" and out["normalised"][0][0] == 1.0


def test_confusion_matrix_without_detections():
    data = _dataset([(1, 1, _box(10, 10))])
    c = confusion_matrix(pack(data, []), [1, 2, 3], ["c1", "c2", "c3"])
    assert c.matrix[0, 3] == 1 and c.matrix.sum() == 1
    assert c.to_json()["top_confusions"] == []


def _mmdet_class_curves(dataset, dets, k, cat_id, same_super):
    """MMDetection's coco_error_analysis for one class: its own COCOeval on a copy of the
    ground truth where the other classes' objects become crowd regions of this class."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = copy.deepcopy(dataset)
    supers = {c["id"]: c["supercategory"] for c in gt["categories"]}
    for a in gt["annotations"]:
        if a["category_id"] != cat_id and (not same_super or supers[a["category_id"]] == supers[cat_id]):
            a.update(ignore=1, iscrowd=1, category_id=cat_id)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        res = coco.loadRes([dict(d) for d in dets if d["category_id"] == cat_id])
        ev = COCOeval(coco, res, "bbox")
        ev.params.maxDets = [100]
        ev.params.iouThrs = [0.1]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][0, :, k, :, 0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 4])
def test_error_curves_equal_mmdetections_per_class_runs(coco_tiny, seed):
    """numpy curves == one COCOeval run per curve == MMDetection's one run per class."""
    dataset = json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text())
    dets = perturbed(dataset, seed=seed, ties=seed == 4)
    ids = {im["id"] for im in dataset["images"]}
    reference = error_curves_cocoeval(dataset, [dict(d) for d in dets], ids, backend="pycocotools")
    curves = error_curves(dataset, [dict(d) for d in dets], ids)
    assert curves.precision.shape == (7, 101, 80, 4) and curves.cat_ids == reference.cat_ids
    np.testing.assert_array_equal(curves.precision, reference.precision)
    if seed == 3:
        for k in (curves.cat_ids.index(1), curves.cat_ids.index(3)):
            for row, same_super in ((3, True), (4, False)):
                theirs = _mmdet_class_curves(dataset, dets, k, curves.cat_ids[k], same_super)
                ours = curves.precision[row, :, k, :]
                valid = ~np.isnan(ours)
                np.testing.assert_allclose(ours[valid], np.where(theirs == -1, 0, theirs)[valid])
    # C75 and C50 taken from the standard COCOeval run are the same curves.
    standard = run_cocoeval(dataset, [dict(d) for d in dets], "pycocotools", ids)
    reused = error_curves_cocoeval(dataset, [dict(d) for d in dets], ids, "pycocotools", evaluation=standard)
    np.testing.assert_array_equal(reused.precision, reference.precision)
    overall = curves.to_json()["overall"]["all"]
    # Each step forgives more: the curves never go down from C75 to FN.
    values = [overall[t] for t in ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")]
    assert values == sorted(values) and values[-1] == 1.0


def test_error_curves_without_detections():
    data = _dataset([(1, 1, _box(10, 10)), (2, 2, _box(30, 30, 50, 50))])
    curves = error_curves(data, [], {1, 2})
    assert np.isnan(curves.precision[:, :, 2, :]).all()  # class 3: no objects
    assert (curves.precision[:5, :, 0, 0] == 0).all() and (curves.precision[6, :, 0, 0] == 1).all()


def test_worst_images_and_error_rows():
    data = _dataset([(1, 1, _box(10, 10)), (2, 1, _box(10, 10)), (2, 2, _box(100, 100))], images=3)
    dets = [_det(1, 1, _box(10, 10), 0.9), _det(2, 2, _box(10, 10), 0.9), _det(3, 1, _box(5, 5), 0.5)]
    packed = pack(data, dets)
    result = tide(packed)
    ap = per_image_ap(packed, result)
    assert ap[0] == pytest.approx(100.0) and ap[1] == 0.0 and ap[2] == 0.0
    worst = worst_images(packed, result, 2)
    assert [w.image_id for w in worst] == [2, 3]  # equal AP: more objects first
    assert worst[0].errors == {"Cls": 1, "Miss": 1}
    rows = error_rows(packed, result, data)
    rows = [dict(zip(CSV_FIELDS, r)) for r in rows]
    kinds = sorted(r["error"] for r in rows)
    assert kinds == ["Bkg", "Cls", "Miss"]  # image 2's c1 object is usable by the Cls error
    cls = next(r for r in rows if r["error"] == "Cls")
    assert cls["gt_annotation_id"] == 2 and cls["category"] == "c2" and cls["gt_category_id"] == 1
    assert cls["score"] == 0.9 and [cls[k] for k in "xywh"] == [10.0, 10.0, 20.0, 20.0]
    miss = next(r for r in rows if r["error"] == "Miss")
    assert miss["score"] == "" and miss["gt_annotation_id"] == 3
    text = rows_to_csv(rows)
    assert text.splitlines()[0].startswith("image_id,file_name,error,")
    assert len(text.splitlines()) == 4
