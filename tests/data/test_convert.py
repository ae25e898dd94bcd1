"""`fpn data convert`: Pascal VOC, YOLO and COCO into COCO or YOLO (#27). Small synthetic
folders made here; one round trip on the real COCO slice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fpncli.data.convert import convert
from fpncli.data.convert.yolo import parse_label_line
from fpncli.errors import FpnError


def voc_xml(filename: str, objects: list[tuple], size: tuple[int, int] = (64, 48)) -> str:
    """A VOC annotation; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
    rows = [f"<annotation>\n  <filename>{filename}</filename>"]
    rows.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, *coords in objects:
        difficult = coords[4] if len(coords) > 4 else 0
        x1, y1, x2, y2 = coords[:4]
        rows.append(
            f"  <object>\n    <name>{name}</name>\n    <difficult>{difficult}</difficult>\n"
            f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>\n"
            "  </object>"
        )
    return "\n".join([*rows, "</annotation>"]) + "\n"


def make_voc(root: Path, make_image, splits: dict[str, list[str]] | None = None) -> Path:
    """a.jpg: a dog (1-based 1..10 x 1..20) and a difficult cat; b.jpg: a cat; c.jpg: nothing."""
    for i, stem in enumerate("abc"):
        make_image(root / "JPEGImages" / f"{stem}.jpg", (64, 48), seed=i)
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    (ann / "a.xml").write_text(voc_xml("a.jpg", [("dog", 1, 1, 10, 20), ("cat", 5, 6, 5, 6, 1)]))
    (ann / "b.xml").write_text(voc_xml("b.jpg", [("cat", 20, 10, 64, 48)]))
    (ann / "c.xml").write_text(voc_xml("c.jpg", []))
    if splits:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for split, ids in splits.items():
            (main / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
        (main / "dog_train.txt").write_text("a  1\nb -1\n")  # a per-class list: not a split
    return root


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def boxes_by_file(coco: dict) -> dict[str, list[tuple[str, list[float]]]]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    out: dict[str, list] = {name: [] for name in files.values()}
    for ann in coco["annotations"]:
        out[files[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"], ann["iscrowd"]))
    return {k: sorted(v) for k, v in out.items()}


# ------------------------------------------------------------------------------ VOC


def test_voc_corners_splits_and_difficult(tmp_path, make_image):
    src = make_voc(tmp_path / "voc", make_image, {"train": ["a", "c"], "val": ["b"]})
    summary = convert(src, "voc", "coco", tmp_path / "out")
    assert not summary.problems
    train = load(tmp_path / "out" / "annotations" / "instances_train.json")
    val = load(tmp_path / "out" / "annotations" / "instances_val.json")
    assert set(summary.splits) == {"train", "val"}  # dog_train.txt is a class list, not a split
    assert (
        [c["name"] for c in train["categories"]] == ["cat", "dog"] == [c["name"] for c in val["categories"]]
    )
    by_file = boxes_by_file(train)
    # VOC 1-based inclusive xmin..xmax -> x = xmin - 1, w = xmax - xmin + 1
    assert by_file["a.jpg"] == [("cat", [4.0, 5.0, 1.0, 1.0], 1), ("dog", [0.0, 0.0, 10.0, 20.0], 0)]
    assert by_file["c.jpg"] == []  # an image without objects stays (a negative)
    assert boxes_by_file(val)["b.jpg"] == [("cat", [19.0, 9.0, 45.0, 39.0], 0)]
    difficult = [a for a in train["annotations"] if a.get("difficult")]
    assert len(difficult) == 1 and difficult[0]["iscrowd"] == 1
    assert {img["id"] for img in train["images"]}.isdisjoint({img["id"] for img in val["images"]})
    assert all((img["width"], img["height"]) == (64, 48) for img in train["images"])


@pytest.mark.parametrize(("mode", "crowd", "boxes"), [("keep", 0, 3), ("drop", None, 2)])
def test_voc_difficult_keep_or_drop(tmp_path, make_image, mode, crowd, boxes):
    src = make_voc(tmp_path / "voc", make_image)  # no ImageSets: one split, train
    summary = convert(src, "voc", "coco", tmp_path / "out", difficult=mode)
    coco = load(tmp_path / "out" / "annotations" / "instances_train.json")
    assert list(summary.splits) == ["train"] and len(coco["annotations"]) == boxes
    tiny = [a for a in coco["annotations"] if a["bbox"] == [4.0, 5.0, 1.0, 1.0]]
    assert (tiny[0]["iscrowd"] if tiny else None) == crowd


def test_voc_bad_files_are_one_line_each_and_the_rest_converts(tmp_path, make_image, cli):
    src = make_voc(tmp_path / "voc", make_image, {"train": ["a", "b", "c", "d", "e", "f", "gone"]})
    ann = src / "Annotations"
    (ann / "d.xml").write_text("<annotation>\n  <filename>d.jpg</filename>\n  <object>\n</annotation>\n")
    (ann / "e.xml").write_text(voc_xml("nowhere.jpg", [("dog", 1, 1, 5, 5)]))
    make_image(src / "JPEGImages" / "f.jpg", (64, 48), seed=9)
    (ann / "f.xml").write_text(
        voc_xml("f.jpg", [("dog", 1, 1, "ten", 5), ("dog", 9, 9, 3, 12), ("dog", 2, 2, 8, 8)])
    )
    (ann / "c.xml").write_text(voc_xml("c.jpg", []))
    (src / "JPEGImages" / "c.jpg").write_bytes(b"not a jpeg")
    before = sorted((p.name, p.read_bytes()) for p in src.rglob("*") if p.is_file())
    out = tmp_path / "out"
    result = cli(["data", "convert", src, "--from", "voc", "--to", "coco", "--out", out])
    assert result.exit_code == 1, result.output
    text = result.output
    assert "Traceback" not in text
    assert f"{ann / 'd.xml'}:4: not valid XML (mismatched tag)" in text
    assert f"{ann / 'e.xml'}:2: names the image JPEGImages/nowhere.jpg, which is missing" in text
    assert f"{ann / 'f.xml'}:7: object 'dog': <xmax> 'ten' is not a number" in text
    assert f"{ann / 'f.xml'}:12: object 'dog': xmin..xmax 9..3" in text
    assert f"{src / 'JPEGImages' / 'c.jpg'}: not an image (unrecognised file format): image skipped" in text
    assert f"{ann / 'gone.xml'}: listed in ImageSets/Main but missing" in text
    coco = load(out / "annotations" / "instances_train.json")
    # a, b and f's one good box are converted; the problems are listed in the output folder too
    assert sorted(boxes_by_file(coco)) == ["a.jpg", "b.jpg", "f.jpg"]
    assert boxes_by_file(coco)["f.jpg"] == [("dog", [1.0, 1.0, 7.0, 7.0], 0)]
    assert len((out / "convert_problems.txt").read_text().splitlines()) == 6
    assert sorted((p.name, p.read_bytes()) for p in src.rglob("*") if p.is_file()) == before


def test_voc_upper_case_xml_is_read_and_nested_xml_is_counted(tmp_path, make_image):
    src = make_voc(tmp_path / "voc", make_image)
    (src / "Annotations" / "b.xml").rename(src / "Annotations" / "b.XML")
    (src / "Annotations" / "extra").mkdir()
    (src / "Annotations" / "extra" / "d.xml").write_text(voc_xml("d.jpg", [("dog", 1, 1, 5, 5)]))
    summary = convert(src, "voc", "coco", tmp_path / "out")
    coco = load(tmp_path / "out" / "annotations" / "instances_train.json")
    assert sorted(boxes_by_file(coco)) == ["a.jpg", "b.jpg", "c.jpg"] and not summary.problems
    assert summary.notes == {
        "XML files in sub-folders of Annotations/ not read (VOC keeps them in Annotations/)": 1
    }


def test_empty_voc_folder_is_a_problem_not_a_crash(tmp_path, cli):
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    result = cli(
        ["data", "convert", tmp_path / "voc", "--from", "voc", "--to", "coco", "--out", tmp_path / "o"]
    )
    assert result.exit_code == 1 and "no image could be converted" in result.output
    assert "nothing was converted" in result.output and "train on it" not in result.output
    assert load(tmp_path / "o" / "annotations" / "instances_train.json")["images"] == []
    result = cli(
        ["data", "convert", tmp_path / "nothing", "--from", "voc", "--to", "coco", "--out", tmp_path / "p"]
    )
    assert result.exit_code == 1 and "no such folder" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------ YOLO


def make_yolo(root: Path, make_image, yaml: str | None = "names:\n  0: dog\n  1: cat\n") -> Path:
    make_image(root / "images" / "train" / "a.jpg", (64, 48), seed=0)
    make_image(root / "images" / "train" / "sub" / "b.png", (40, 80), seed=1)
    make_image(root / "images" / "val" / "c.jpg", (64, 48), seed=2)
    labels = root / "labels"
    (labels / "train" / "sub").mkdir(parents=True)
    (labels / "val").mkdir(parents=True)
    (labels / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n\n1 0.25 0.25 0.5 0.5\n")
    (labels / "train" / "sub" / "b.txt").write_text("1 0.1 0.1 0.9 0.1 0.9 0.6 0.1 0.6\n")  # a polygon
    if yaml is not None:
        (root / "data.yaml").write_text(yaml)
    return root


def test_yolo_to_coco_reads_sizes_from_the_images(tmp_path, make_image):
    src = make_yolo(
        tmp_path / "yolo",
        make_image,
        "path: .\ntrain: images/train\nval: images/val\nnames: {0: dog, 1: cat}\n",
    )
    summary = convert(src, "yolo", "coco", tmp_path / "out")
    assert not summary.problems and summary.names == ["dog", "cat"]
    train = load(tmp_path / "out" / "annotations" / "instances_train.json")
    assert [(c["id"], c["name"]) for c in train["categories"]] == [(1, "dog"), (2, "cat")]
    by_file = boxes_by_file(train)
    assert by_file["a.jpg"] == [("cat", [0.0, 0.0, 32.0, 24.0], 0), ("dog", [16.0, 12.0, 32.0, 24.0], 0)]
    assert by_file["sub/b.png"] == [("cat", [4.0, 8.0, 32.0, 40.0], 0)]  # 40x80 image
    assert (tmp_path / "out" / "train" / "sub" / "b.png").is_file()
    val = load(tmp_path / "out" / "annotations" / "instances_val.json")
    assert boxes_by_file(val) == {"c.jpg": []}  # no label file: an image without objects
    assert summary.notes == {"images without a label file (no objects)": 1}


@pytest.mark.parametrize(
    "yaml",
    ["names: [dog, cat]\n", "nc: 2\nnames:\n  - dog\n  - cat\n", "names:\n  '0': dog\n  '1': cat\n"],
)
def test_yolo_names_forms_and_split_folders_without_keys(tmp_path, make_image, yaml):
    src = make_yolo(tmp_path / "yolo", make_image, yaml)
    summary = convert(src, "yolo", "coco", tmp_path / "out")
    assert summary.names == ["dog", "cat"] and set(summary.splits) == {"train", "val"}


def test_yolo_splits_sharing_a_folder_are_both_kept(tmp_path, make_image):
    # coco128's data.yaml: train and val both read images/train2017. Neither split may replace
    # the other's annotations file.
    src = make_yolo(
        tmp_path / "yolo", make_image, "train: images/train\nval: images/train\nnames: [dog, cat]\n"
    )
    summary = convert(src, "yolo", "coco", tmp_path / "out")
    assert set(summary.splits) == {"train", "val"}
    for split in ("train", "val"):
        coco = load(tmp_path / "out" / "annotations" / f"instances_{split}.json")
        assert sorted(boxes_by_file(coco)) == ["a.jpg", "sub/b.png"]
    assert any("same images as another split" in note for note in summary.notes)


def test_written_data_yaml_reads_relative_to_itself(tmp_path, make_image, write_coco, monkeypatch):
    # Ultralytics resolves a relative 'path' against its datasets folder (or the working
    # directory), not the YAML's: the file must not carry one.
    src = _synthetic_coco(tmp_path / "coco", make_image, write_coco)
    convert(src, "coco", "yolo", tmp_path / "yolo")
    import yaml

    assert "path" not in yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    monkeypatch.chdir(tmp_path / "coco")  # another working directory reads the same set
    back = convert(tmp_path / "yolo" / "data.yaml", "yolo", "coco", tmp_path / "back")
    original = load(src / "annotations" / "instances_train.json")
    assert not back.problems and back.splits["train"]["images"] == len(original["images"]) > 0


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("names: [dog, dog]\n", "class name 'dog' is given twice in 'names' (classes 0 and 1)"),
        ("names: [dog, null]\n", "class 1 has no name in 'names'"),
        ("names: {0: dog, 1: ''}\n", "class 1 has no name in 'names'"),
    ],
)
def test_yolo_names_must_be_named_once(tmp_path, make_image, cli, yaml, message):
    src = make_yolo(tmp_path / "yolo", make_image, yaml)
    result = cli(["data", "convert", src, "--from", "yolo", "--to", "coco", "--out", tmp_path / "o"])
    assert result.exit_code == 1 and f"{src / 'data.yaml'}: {message}" in result.output
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_yolo_label_files_without_an_image_are_counted(tmp_path, make_image):
    src = make_yolo(tmp_path / "yolo", make_image)
    (src / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    summary = convert(src, "yolo", "coco", tmp_path / "out")
    assert summary.notes["label files without an image (not converted)"] == 1
    assert not summary.problems and summary.splits["train"]["images"] == 2


def test_yolo_without_yaml_needs_classes(tmp_path, make_image, cli):
    src = make_yolo(tmp_path / "yolo", make_image, None)
    result = cli(["data", "convert", src, "--from", "yolo", "--to", "coco", "--out", tmp_path / "o"])
    assert result.exit_code == 1 and "--classes a,b,c" in result.output and "Traceback" not in result.output
    result = cli(
        [
            "data",
            "convert",
            src,
            "--from",
            "yolo",
            "--to",
            "coco",
            "--out",
            tmp_path / "o",
            "--classes",
            "dog,cat",
        ]
    )
    assert result.exit_code == 0, result.output
    (src / "data.yaml").write_text("names: [dog, cat\ntrain: x\n")
    result = cli(["data", "convert", src, "--from", "yolo", "--to", "coco", "--out", tmp_path / "p"])
    assert (
        result.exit_code == 1
        and f"{src / 'data.yaml'}:" in result.output
        and "not valid YAML" in result.output
    )


def test_yolo_bad_label_lines_name_file_and_line(tmp_path, make_image, cli):
    src = make_yolo(tmp_path / "yolo", make_image)
    bad = src / "labels" / "val" / "c.txt"
    bad.write_text(
        "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n0 0.5 0.5\n1 abc 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n"
    )
    (src / "images" / "train" / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = cli(["data", "convert", src, "--from", "yolo", "--to", "coco", "--out", out])
    assert result.exit_code == 1 and "Traceback" not in result.output
    for line, what in [
        (2, "class 7 is not a class index (0..1"),
        (3, "cx 1.5 is outside [0, 1]"),
        (4, "expected 'class cx cy w h' (5 numbers)"),
        (5, "'abc' is not a number"),
        (6, "w 0 and h 0.2 must be > 0"),
    ]:
        assert f"{bad}:{line}: {what}" in result.output
    assert f"{src / 'images' / 'train' / 'broken.jpg'}: empty file (0 bytes): image skipped" in result.output
    val = load(out / "annotations" / "instances_val.json")
    assert boxes_by_file(val)["c.jpg"] == [("dog", [25.6, 19.2, 12.8, 9.6], 0)]  # line 1 kept
    assert len(load(out / "annotations" / "instances_train.json")["images"]) == 2


def test_label_line_parser_edges():
    assert parse_label_line(["0", "0.5", "0.5", "1", "1"], 1, 10, 10).xyxy == (0.0, 0.0, 10.0, 10.0)
    assert "polygon" in parse_label_line(["0", "0.1", "0.1", "0.2", "0.2", "0.3"], 1, 10, 10)
    assert "is not a class index" in parse_label_line(["0.5", "0.5", "0.5", "0.1", "0.1"], 2, 10, 10)
    assert "not finite" in parse_label_line(["0", "nan", "0.5", "0.1", "0.1"], 1, 10, 10)


# ------------------------------------------------------------------------------ COCO <-> YOLO


def _synthetic_coco(root: Path, make_image, write_coco) -> Path:
    import random

    rng = random.Random(0)
    cats = [{"id": 3, "name": "car"}, {"id": 7, "name": "traffic light"}, {"id": 90, "name": "tooth: brush"}]
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (97, 131), (50, 50)]):
        make_image(root / "train" / f"{i}.jpg", (w, h), seed=i)
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(4):
            x, y = rng.uniform(0, w - 5), rng.uniform(0, h - 5)
            bw, bh = rng.uniform(1, w - x), rng.uniform(1, h - y)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": rng.choice([3, 7, 90]),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})  # fmt: skip
    anns.append({"id": 99, "image_id": 100, "category_id": 3, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 1})
    write_coco(root / "annotations" / "instances_train.json", images, anns, cats)
    return root


def _assert_round_trip(original: dict, back: dict, tolerance: float = 0.5) -> None:
    assert [(c["id"], c["name"]) for c in back["categories"]] == [
        (c["id"], c["name"]) for c in sorted(original["categories"], key=lambda c: c["id"])
    ]
    want = {k: [b for b in v if not b[2]] for k, v in boxes_by_file(original).items()}  # crowd: not in YOLO
    got = boxes_by_file(back)
    assert want.keys() == got.keys()
    for name in want:
        assert [b[0] for b in want[name]] == [b[0] for b in got[name]], name
        for (_, a, _), (_, b, _) in zip(want[name], got[name]):
            assert max(abs(u - v) for u, v in zip(a, b)) <= tolerance, (name, a, b)


def test_coco_yolo_coco_round_trip_keeps_boxes_names_and_ids(tmp_path, make_image, write_coco):
    src = _synthetic_coco(tmp_path / "coco", make_image, write_coco)
    there = convert(src, "coco", "yolo", tmp_path / "yolo")
    assert there.notes == {"crowd regions left out (YOLO has no crowd flag)": 1}
    import yaml

    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert (
        data["names"] == {0: "car", 1: "traffic light", 2: "tooth: brush"} and data["train"] == "images/train"
    )
    back = convert(tmp_path / "yolo", "yolo", "coco", tmp_path / "back")
    assert not back.problems
    original = load(src / "annotations" / "instances_train.json")
    _assert_round_trip(original, load(tmp_path / "back" / "annotations" / "instances_train.json"), 0.01)


def test_round_trip_on_real_coco(tmp_path, coco_tiny):
    convert(coco_tiny, "coco", "yolo", tmp_path / "yolo")
    back = convert(tmp_path / "yolo", "yolo", "coco", tmp_path / "back")
    assert not back.problems and set(back.splits) == {"train2017", "val2017"}
    for split in back.splits:
        original = load(coco_tiny / "annotations" / f"instances_{split}.json")
        _assert_round_trip(original, load(tmp_path / "back" / "annotations" / f"instances_{split}.json"))


# ------------------------------------------------------------------------------ output safety


def test_link_copy_overwrite_and_the_source_is_never_written(tmp_path, make_image):
    src = make_voc(tmp_path / "voc", make_image)
    original = (src / "JPEGImages" / "a.jpg").read_bytes()
    out = tmp_path / "out"
    convert(src, "voc", "coco", out)
    assert (out / "train" / "a.jpg").is_symlink()
    assert os.path.samefile(out / "train" / "a.jpg", src / "JPEGImages" / "a.jpg")
    with pytest.raises(FpnError, match="already there; pass --overwrite"):
        convert(src, "voc", "coco", out)
    make_image(src / "JPEGImages" / "a.jpg", (64, 48), seed=5)  # changed source: the copy must be the new one
    changed = (src / "JPEGImages" / "a.jpg").read_bytes()
    convert(src, "voc", "coco", out, images="copy", overwrite=True)
    assert not (out / "train" / "a.jpg").is_symlink() and (out / "train" / "a.jpg").read_bytes() == changed
    assert (src / "JPEGImages" / "a.jpg").read_bytes() == changed != original
    for bad_out in (src, src / "inside", tmp_path):
        with pytest.raises(FpnError, match="must not be the source folder"):
            convert(src, "voc", "coco", bad_out)


def test_converted_voc_loads_as_a_training_set(tmp_path, make_image):
    from fpncli.data.dataset import DetectionDataset

    src = make_voc(tmp_path / "voc", make_image, {"train": ["a", "b"], "val": ["c"]})
    convert(src, "voc", "coco", tmp_path / "out")
    data = DetectionDataset(
        tmp_path / "out" / "annotations" / "instances_train.json", tmp_path / "out" / "train"
    )
    assert data.categories.names == ["cat", "dog"] and len(data) == 2 and data.report.crowd == 1
    image, target = data[0]
    assert tuple(image.shape) == (3, 48, 64)
    assert target["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0]] and target["labels"].tolist() == [2]


@pytest.mark.slow  # about 2 s alone, over 3 s on a busy machine
def test_fpn_train_accepts_a_converted_yolo_set(tmp_path, make_image, cli, one_thread):
    src = make_yolo(tmp_path / "yolo", make_image)
    converted = cli(["data", "convert", src, "--from", "yolo", "--to", "coco", "--out", tmp_path / "coco"])
    assert converted.exit_code == 0, converted.output
    args = [
        "train",
        "--data",
        tmp_path / "coco",
        "--preset",
        "tiny",
        "--out",
        tmp_path / "run",
        "--iters",
        "1",
    ]
    common = [
        "--workers",
        "0",
        "--min-size",
        "64",
        "--max-size",
        "96",
        "--batch-size",
        "2",
        "--eval-every",
        "-1",
    ]
    trained = cli([*args, *common])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert "2 training images" in trained.output and (tmp_path / "run" / "last.pt").is_file()


def test_roboflow_layout_and_json_summary(tmp_path, make_image, cli):
    root = tmp_path / "rf"
    make_image(root / "train" / "images" / "a.jpg", (64, 48))
    make_image(root / "valid" / "images" / "b.jpg", (64, 48))
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n0 2 0.5 0.5 0.5\n")
    # Roboflow's export: "../train/images" is read as "train/images", as Ultralytics does
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: valid/images\ntest: ../test/images\nnc: 1\nnames: ['dog']\n"
    )
    out = tmp_path / "o"
    result = cli(["data", "convert", root, "--from", "yolo", "--to", "coco", "--out", out, "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["splits"]["train"]["boxes"] == 1
    assert data["splits"]["val"] == {
        "images": 1,
        "boxes": 0,
        "crowd": 0,
        "file": str(out / "annotations" / "instances_val.json"),
    }
    assert data["problems"] == [
        f"{root / 'data.yaml'}: test: ../test/images is not a folder of images or a .txt list; skipped",
        f"{root / 'train' / 'labels' / 'a.txt'}:2: cx 2 is outside [0, 1] (coordinates are fractions of the image size); line skipped",
    ]
    assert not (out / "annotations" / "instances_test.json").exists()


def test_yolo_sizes_are_the_upright_images(tmp_path, make_image):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": stored 64x48, seen (and trained on) as 48x64
    make_image(tmp_path / "y" / "images" / "train" / "r.jpg", (64, 48), exif=exif)
    (tmp_path / "y" / "labels" / "train").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "train" / "r.txt").write_text("0 0.5 0.25 1 0.5\n")
    (tmp_path / "y" / "data.yaml").write_text("names: [thing]\n")
    convert(tmp_path / "y", "yolo", "coco", tmp_path / "out")
    coco = load(tmp_path / "out" / "annotations" / "instances_train.json")
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (48, 64)
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 48.0, 32.0]


def test_ctrl_c_keeps_the_splits_already_written(tmp_path, make_image, cli, monkeypatch):
    import fpncli.data.convert.coco_out as coco_out

    src = make_voc(tmp_path / "voc", make_image, {"train": ["a", "b"], "val": ["c"]})
    out = tmp_path / "out"
    place = coco_out.place_image

    def interrupt_in_the_second_split(source, target, mode):
        if any((out / "annotations").glob("instances_*.json")):
            raise KeyboardInterrupt
        place(source, target, mode)

    monkeypatch.setattr(coco_out, "place_image", interrupt_in_the_second_split)
    result = cli(["data", "convert", src, "--from", "voc", "--to", "coco", "--out", out])
    assert result.exit_code == 130 and "Traceback" not in result.output
    (written,) = (out / "annotations").glob("instances_*.json")  # the finished split, valid JSON
    assert len(load(written)["images"]) == (2 if written.name == "instances_train.json" else 1)
    assert not [p for p in (out / "annotations").iterdir() if p.name.endswith(".tmp")]  # none half-written
