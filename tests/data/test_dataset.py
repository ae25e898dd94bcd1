"""Training dataset and batch sampler: COCO quirks handled, flips right, batches seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fpncli.data.dataset import DetectionDataset, collate
from fpncli.data.sampler import GroupedBatches
from fpncli.errors import FpnError


@pytest.fixture
def dataset_files(tmp_path, write_coco, make_image):
    """``dataset_files(images, annotations, categories=None)``: the images (noise, at their
    stated sizes; unsafe names are not written) under ``tmp_path/images`` and the COCO file
    ``tmp_path/ann.json``; returns ``(ann, img_dir)``."""

    def write(images, annotations, categories=None):
        img_dir = tmp_path / "images"
        img_dir.mkdir(exist_ok=True)
        for img in images:
            if not img["file_name"].startswith(("/", "..")):
                make_image(img_dir / img["file_name"], size=(img["width"], img["height"]))
        categories = categories or [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
        return write_coco(tmp_path / "ann.json", images, annotations, categories), img_dir

    return write


def _ann(i, image_id, bbox, cat=5, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd, "area": 1}


def test_dataset_cleans_boxes_keeps_negatives_and_ignores_crowd(dataset_files):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 30, "height": 40},
        {"id": 3, "file_name": "neg.png", "width": 20, "height": 20},
    ]
    anns = [
        _ann(1, 1, [2, 3, 10, 5], cat=9),  # good -> label 2
        _ann(2, 1, [35, 20, 20, 20]),  # sticks out -> clipped
        _ann(3, 1, [5, 5, 0, 10]),  # zero width -> dropped
        _ann(4, 1, [50, 50, 5, 5]),  # outside the image -> dropped
        _ann(5, 1, [1, 1, -4, 3]),  # negative size -> dropped
        _ann(6, 2, [0, 0, 10, 10], crowd=1),  # crowd -> ignored
        _ann(7, 2, [3, 4, 5, 6]),
    ]
    ann, img_dir = dataset_files(images, anns)
    ds = DetectionDataset(ann, img_dir)
    assert len(ds) == 3 and ds.report.negatives == 1
    assert ds.report.dropped_boxes == 3 and ds.report.clipped_boxes == 1 and ds.report.crowd == 1
    warnings = ds.report.warnings()
    assert len(warnings) == 1 and "3 degenerate" in warnings[0]
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [2, 1]
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3, 12, 8], [35, 20, 40, 30]]))
    assert ds[1][1]["boxes"].tolist() == [[3.0, 4, 8, 10]]  # crowd box left out
    _neg_image, neg = ds[2]
    assert neg["boxes"].shape == (0, 4) and neg["labels"].shape == (0,)
    assert len(DetectionDataset(ann, img_dir, drop_negatives=True)) == 2


def test_flip_mirrors_image_and_boxes(dataset_files):
    ann, img_dir = dataset_files(
        [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], [_ann(1, 1, [2, 3, 10, 5])]
    )
    Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3)).save(img_dir / "a.png")
    ds = DetectionDataset(ann, img_dir)
    (img, _t), (fimg, ft) = ds[(0, False)], ds[(0, True)]
    assert torch.equal(fimg, img.flip(-1))
    assert ft["boxes"].tolist() == [[28.0, 3, 38, 8]]
    assert torch.equal(ds[(0, True)][1]["boxes"], ft["boxes"])


def test_unsafe_paths_and_bad_inputs_are_refused(dataset_files, tmp_path):
    ann, img_dir = dataset_files([{"id": 1, "file_name": "../escape.png", "width": 4, "height": 4}], [])
    with pytest.raises(FpnError, match="leaves the images folder"):
        DetectionDataset(ann, img_dir)
    ann, img_dir = dataset_files([{"id": 1, "file_name": "/etc/passwd", "width": 4, "height": 4}], [])
    with pytest.raises(FpnError, match="absolute"):
        DetectionDataset(ann, img_dir)
    with pytest.raises(FpnError, match="images folder not found"):
        DetectionDataset(ann, tmp_path / "nope")
    with pytest.raises(FpnError, match="no such file"):
        DetectionDataset(tmp_path / "missing.json", img_dir)


def test_missing_and_corrupt_images_do_not_stop_the_rest(dataset_files):
    images = [
        {"id": 1, "file_name": "a.png", "width": 8, "height": 8},
        {"id": 2, "file_name": "b.png", "width": 8, "height": 8},
    ]
    ann, img_dir = dataset_files(images, [_ann(1, 1, [1, 1, 4, 4]), _ann(2, 2, [1, 1, 4, 4])])
    (img_dir / "a.png").unlink()
    ds = DetectionDataset(ann, img_dir)
    assert len(ds) == 1 and "not found" in ds.report.warnings()[0]
    (img_dir / "b.png").write_bytes(b"not a png")
    skipped = ds[0]
    assert "b.png" in skipped.path and "not an image" in skipped.reason
    assert collate([skipped]) == ([], [], [skipped.reason])


def test_empty_annotation_file(dataset_files):
    ann, img_dir = dataset_files([], [])
    assert len(DetectionDataset(ann, img_dir)) == 0


def test_grouped_batches_are_seeded_grouped_and_split_across_ranks():
    groups = [0, 1] * 10 + [0] * 5  # 15 landscape, 10 portrait
    sampler = GroupedBatches(groups, batch_size=4, seed=7)
    e0, e0b, e1 = sampler.epoch(0), GroupedBatches(groups, 4, seed=7).epoch(0), sampler.epoch(1)
    assert e0 == e0b and e0 != e1 and len(e0) == len(sampler) == 7
    assert sorted(i for b in e0 for i, _ in b) == list(range(25))
    # 15 // 4 + 10 // 4 single-orientation batches first, then the 3 + 2 leftovers mixed
    assert all(len(b) == 4 and len({groups[i] for i, _ in b}) == 1 for b in e0[:5])
    assert len({groups[i] for b in e0[5:] for i, _ in b}) == 2
    flips = [f for b in e0 for _, f in b]
    assert 0 < sum(flips) < len(flips)
    assert not any(f for b in GroupedBatches(groups, 4, flip=False).epoch(0) for _, f in b)
    ranks = [GroupedBatches(groups, 3, seed=7, rank=r, world_size=2) for r in range(2)]
    parts = [r.epoch(0) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0])
    seen = [i for p in parts for b in p for i, _ in b]
    assert len(seen) == 26 and set(seen) == set(range(25))  # padded by one, like DistributedSampler
    # resuming at iteration k yields exactly the batches after the first k
    stream = sampler.iterate(0)
    first = [next(stream) for _ in range(10)]
    resumed = sampler.iterate(4)
    assert [next(resumed) for _ in range(6)] == first[4:]
    with pytest.raises(ValueError):
        GroupedBatches([], 2)
