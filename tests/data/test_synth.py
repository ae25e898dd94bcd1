"""`fpn data synth`: a COCO-layout dataset of multi-scale shapes, deterministic by seed."""

from __future__ import annotations

import json

import pytest

from fpncli.data.coco import load_coco
from fpncli.data.synth import CLASSES, synthesize
from fpncli.errors import FpnError


def test_synth_writes_coco_layout_with_all_size_buckets(tmp_path):
    summary = synthesize(tmp_path / "ds", train=24, val=6, seed=3)
    coco = load_coco(tmp_path / "ds" / "annotations" / "instances_train.json")
    assert len(coco.images) == 24 and not coco.problems
    assert coco.categories.names == list(CLASSES)
    for img in coco.images.values():
        assert (tmp_path / "ds" / "train" / img["file_name"]).is_file()
        for ann in coco.annotations[img["id"]]:
            x, y, w, h = ann["bbox"]
            assert w >= 8 and h >= 8 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
    train = summary["splits"]["train"]
    # small (< 32²), medium and large (> 96²) objects all occur: the paper's regime
    assert train["small"] > 0 and train["medium"] > 0 and train["large"] > 0
    assert train["objects"] == sum(len(a) for a in coco.annotations.values())
    assert len(load_coco(tmp_path / "ds" / "annotations" / "instances_val.json").images) == 6


def test_synth_is_deterministic_and_val_independent_of_train_count(tmp_path):
    synthesize(tmp_path / "a", train=4, val=3, seed=1)
    synthesize(tmp_path / "b", train=9, val=3, seed=1)
    synthesize(tmp_path / "c", train=4, val=3, seed=2)

    def read(root, split):
        return json.loads((root / "annotations" / f"instances_{split}.json").read_text())

    assert read(tmp_path / "a", "val")["annotations"] == read(tmp_path / "b", "val")["annotations"]
    assert (tmp_path / "a" / "val" / "000002.png").read_bytes() == (
        tmp_path / "b" / "val" / "000002.png"
    ).read_bytes()
    assert read(tmp_path / "a", "train")["annotations"] != read(tmp_path / "c", "train")["annotations"]


def test_synth_empty_split_is_valid(tmp_path):
    summary = synthesize(tmp_path / "ds", train=0, val=2)
    assert summary["splits"]["train"]["images"] == 0
    coco = load_coco(tmp_path / "ds" / "annotations" / "instances_train.json")
    assert coco.images == {} and len(coco.categories) == len(CLASSES)


def test_synth_refuses_to_overwrite(tmp_path):
    synthesize(tmp_path / "ds", train=1, val=1)
    with pytest.raises(FpnError, match="already exists"):
        synthesize(tmp_path / "ds", train=1, val=1)
    synthesize(tmp_path / "ds", train=2, val=1, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FpnError, match="not a folder"):
        synthesize(tmp_path / "file", train=1, val=1)


def test_synth_cli(tmp_path, cli):
    result = cli(["data", "synth", str(tmp_path / "ds"), "--train", "3", "--val", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ds" / "annotations" / "instances_train.json").is_file()
    again = cli(["data", "synth", str(tmp_path / "ds"), "--train", "3"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = cli(["data", "synth", str(tmp_path / "x"), "--train", "-1"])
    assert bad.exit_code != 0
