"""Sliced inference and test-time augmentation: tiles, views, merging, flip symmetry, options."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from PIL import Image

from fpncli.errors import FpnError
from fpncli.inference.augment import (
    MAX_VIEWS,
    AugmentedDetector,
    SliceSpec,
    TTASpec,
    augmented,
    check_slice,
    parse_tta,
    plan_views,
    tile_count,
    tile_windows,
    view_count,
)
from fpncli.inference.detect import DetectOptions, run_detect

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model(tiny_model):
    """The tiny random model with no score threshold, so that it detects plenty."""
    tiny_model.roi_heads.score_thresh = 0.0
    return tiny_model


def _image(seed: int = 0, size=(96, 72)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((3, size[1], size[0]), generator=g)


# ------------------------------------------------------------------ tiles and views (no model)


def test_tiles_cover_the_image_inside_its_bounds():
    for width, height, size, overlap in [(100, 50, 40, 0.2), (513, 300, 128, 0.5), (64, 64, 64, 0.0)]:
        tiles = tile_windows(width, height, size, overlap)
        covered = torch.zeros((height, width), dtype=torch.bool)
        for x1, y1, x2, y2 in tiles:
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert x2 - x1 == min(size, width) and y2 - y1 == min(size, height)
            covered[y1:y2, x1:x2] = True
        assert covered.all()
    # neighbours overlap by at least the fraction asked for
    xs = sorted({t[0] for t in tile_windows(1000, 10, 100, 0.25)})
    assert all(b - a <= 75 for a, b in itertools.pairwise(xs))
    assert tile_windows(30, 20, 100, 0.2) == [(0, 0, 30, 20)]


def test_views_combine_tiles_scales_and_flips():
    views = plan_views(200, 100, 128, SliceSpec(100, 0.0), TTASpec(flip=True, scales=(0.5, 1.0)))
    windows = {v.window for v in views}
    assert windows == {(0, 0, 200, 100), (0, 0, 100, 100), (100, 0, 200, 100)}
    assert len(views) == 3 * 2 * 2
    assert {v.min_size for v in views} == {64, None}  # 1.0 is the model's own size
    assert plan_views(50, 40, 128, SliceSpec(64, 0.2)) == plan_views(50, 40, 128)  # one tile = the image
    assert {v.min_size for v in plan_views(50, 40, 128, None, TTASpec(scales=(96.0, 128.0)))} == {96, None}


def test_bad_options_are_one_line_errors():
    with pytest.raises(FpnError, match="--slice must be at least 1"):
        check_slice(0)
    for overlap in (1.0, -0.1):
        with pytest.raises(FpnError, match=r"--slice-overlap must be in \[0, 1\)"):
            check_slice(256, overlap)
    with pytest.raises(FpnError, match="unknown item 'rotate'"):
        parse_tta("flip,rotate")
    with pytest.raises(FpnError, match="scales must be numbers"):
        parse_tta("scales=a:b")
    with pytest.raises(FpnError, match="positive"):
        parse_tta("scales=0:1")
    with pytest.raises(FpnError, match="nothing given"):
        parse_tta(" , ")
    assert parse_tta(None) is None and parse_tta("none") is None
    assert parse_tta("flip") == TTASpec(flip=True)
    assert check_slice(None) is None


def test_boxes_a_tile_cuts_are_dropped_and_mapped_back():
    from fpncli.inference.augment import View, _to_image

    out = {
        "boxes": torch.tensor([[0.0, 10, 20, 30], [10, 10, 20, 20], [25, 5, 35, 39.5], [5, 0, 15, 8]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "labels": torch.tensor([1, 2, 3, 1]),
    }
    # a 40 x 40 tile at (20, 0) of a 100 x 40 image: its left and right edges are inside the image
    kept = _to_image(out, View((20, 0, 60, 40)), image_size=(100, 40))
    assert kept["scores"].tolist() == pytest.approx([0.8, 0.7, 0.6])  # the left-edge box is cut
    assert kept["boxes"][0].tolist() == [30.0, 10, 40, 20]  # shifted by the tile's corner
    # the same tile mirrored: the cut test uses the tile's own edges, after mirroring back
    mirrored = {
        **out,
        "boxes": out["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1])
        + torch.tensor([40.0, 0, 40, 0]),
    }
    assert torch.equal(
        _to_image(mirrored, View((20, 0, 60, 40), flip=True), (100, 40))["boxes"], kept["boxes"]
    )
    # the whole image is never filtered
    assert len(_to_image(out, View((0, 0, 40, 40)), image_size=(40, 40))["boxes"]) == 4
    assert len(_to_image(out, View((20, 0, 60, 40)))["boxes"]) == 4  # no image size: no filter


# ------------------------------------------------------------------ with the model


def test_a_tile_covering_the_image_gives_plain_detections(model):
    image = _image()
    with torch.inference_mode():
        plain = model.detect_prepared([model.prepare_image(image)], [(72, 96)])[0]
        sliced = AugmentedDetector(model, SliceSpec(96, 0.2)).detect_image(image)
    assert len(plain["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(plain[key], sliced[key])


def test_slicing_adds_tile_detections_in_image_pixels(model):
    image = _image(1)
    with torch.inference_mode():
        plain = model.detect_prepared([model.prepare_image(image)], [(72, 96)])[0]
        sliced = AugmentedDetector(model, SliceSpec(48, 0.25)).detect_image(image)
    assert len(sliced["boxes"]) <= model.detections_per_img
    assert not torch.equal(plain["boxes"], sliced["boxes"][: len(plain["boxes"])])
    boxes = sliced["boxes"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 72).all()
    assert torch.all(sliced["scores"][:-1] >= sliced["scores"][1:])  # best first


def test_no_detections_in_any_view(tiny_model):
    tiny_model.roi_heads.score_thresh = 1.0  # nothing scores above 1
    tta = AugmentedDetector(tiny_model, SliceSpec(48, 0.2), TTASpec(flip=True))
    with torch.inference_mode():
        out = tta.detect_image(_image(4))
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


def test_flip_tta_is_symmetric(model):
    """A mirrored image's TTA detections are the original's, mirrored."""
    image = _image(2)
    tta = AugmentedDetector(model, tta=TTASpec(flip=True, scales=(1.0, 0.75)))
    with torch.inference_mode():
        a = tta.detect_image(image)
        b = tta.detect_image(image.flip(-1))
    assert len(a["boxes"]) > 0 and len(a["boxes"]) == len(b["boxes"])
    mirrored = a["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([96.0, 0, 96, 0])
    order_a = torch.argsort(a["scores"], stable=True)
    order_b = torch.argsort(b["scores"], stable=True)
    torch.testing.assert_close(mirrored[order_a], b["boxes"][order_b], atol=1e-3, rtol=0)
    torch.testing.assert_close(a["scores"][order_a], b["scores"][order_b])
    assert torch.equal(a["labels"][order_a], b["labels"][order_b])


def test_detect_and_eval_run_with_slice_and_tta(tmp_path, tiny_model, cli):
    from fpncli.checkpoint import save_checkpoint

    tiny_model.config = tiny_model.config.replace(box_score_thresh=0.0)
    weights = str(save_checkpoint(tmp_path / "tiny.pt", tiny_model))
    arr = (_image(3).permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(arr).save(src / "a.png")

    def detect(out: str, **kw) -> list:
        options = DetectOptions(weights=weights, out_dir=tmp_path / out, score_thr=0.0, workers=0, **kw)
        run_detect([str(src)], options)
        return json.loads((tmp_path / out / "predictions.json").read_text())["images"][0]["detections"]

    plain = detect("plain")
    assert detect("whole", slice_size=500) == plain  # one tile covering the image: the same
    assert detect("tiles", slice_size=40, tta="flip") != plain
    # eval through the CLI: the options reach the model run and are recorded
    ann = {
        "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 72}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600}],
        "categories": [
            {"id": 1, "name": "circle"},
            {"id": 3, "name": "square"},
            {"id": 7, "name": "triangle"},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    args = ["eval", "--coco", str(tmp_path / "ann.json"), "--images", str(src), "--weights", weights]
    result = cli([*args, "--out", str(tmp_path / "ev"), "--slice", "48", "--tta", "flip"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["inference"] == {"tta": "flip", "slice": 48, "slice_overlap": 0.2}
    bad = cli([*args, "--out", str(tmp_path / "ev2"), "--slice-overlap", "1.5", "--slice", "8"])
    assert bad.exit_code == 1 and "--slice-overlap must be in [0, 1)" in bad.output
    assert not (tmp_path / "ev2").exists()


def test_detect_cli_refuses_bad_tta(tmp_path, cli):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    result = cli(["detect", str(img), "--weights", "none", "--out", str(tmp_path / "o"), "--tta", "x"])
    assert result.exit_code == 1 and "--tta: unknown item 'x'" in result.output
    assert not (tmp_path / "o").exists()


def test_synth_size_option(tmp_path, cli):
    result = cli(["data", "synth", str(tmp_path / "d"), "--train", "0", "--val", "1", "--size", "96x64"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "d" / "val" / "000000.png").size == (96, 64)
    bad = cli(["data", "synth", str(tmp_path / "e"), "--val", "1", "--size", "96"])
    assert bad.exit_code == 1 and "--size: expected WxH" in bad.output


# ------------------------------------------------------------------ absurd settings are refused


def test_view_and_tile_counts_match_the_plans():
    for (w, h), size, overlap, tta in itertools.product(
        [(1, 1), (96, 72), (500, 333), (1333, 800)],
        [32, 96, 512],
        [0.0, 0.2, 0.75],
        [None, TTASpec(flip=True), TTASpec(scales=(0.5, 1.0, 700))],
    ):
        spec = SliceSpec(size, overlap)
        assert tile_count(w, h, size, overlap) == len(tile_windows(w, h, size, overlap))
        assert view_count(w, h, 800, spec, tta) == len(plan_views(w, h, 800, spec, tta))
        assert view_count(w, h, 800, None, tta) == len(plan_views(w, h, 800, None, tta))


def test_overlap_without_slice_and_tiles_too_dense_for_any_image_are_refused():
    assert check_slice(None, None) is None and check_slice(64, None) == SliceSpec(64, 0.2)
    with pytest.raises(FpnError, match="--slice-overlap has no effect without --slice"):
        check_slice(None, 0.3)
    # The hostile case: 200 px tiles one pixel apart took over 300 s on a 500x333 photo.
    with pytest.raises(FpnError, match=r"an image of 400 px would already take 40,401 tiles"):
        check_slice(200, 0.999)
    assert check_slice(512, 0.9) == SliceSpec(512, 0.9)  # dense but sane


def test_an_image_with_too_many_views_fails_alone(tiny_model):
    model = AugmentedDetector(tiny_model, SliceSpec(32, 0.9))  # stride 3 px
    assert model.size_problem(96, 72) is None
    problem = model.size_problem(3000, 2000)
    assert problem is not None and f"over the limit of {MAX_VIEWS:,}" in problem and "3000x2000" in problem


def test_tta_scale_over_the_pixel_limit_is_refused_up_front(tiny_model):
    with pytest.raises(FpnError, match=r"a 100,000 px shorter side is at least 10,000,000,000 pixels"):
        augmented(tiny_model, None, parse_tta("scales=100000"))
    with pytest.raises(FpnError, match="over the limit of 10,000"):
        augmented(tiny_model, None, parse_tta("flip,scales=1:200"), max_pixels=10_000)
    # Within the limit as a square, over it for a long image: that image alone fails.
    model = augmented(tiny_model, None, parse_tta("scales=90"), max_pixels=9_000)
    assert model.size_problem(64, 64) is None  # 90x90 = 8,100 pixels at that scale
    assert "image becomes 112x89 pixels, over the limit of 9,000" in (model.size_problem(200, 160) or "")


def test_detect_cli_refuses_overlap_without_slice_before_any_work(tmp_path, cli):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    out = tmp_path / "o"
    result = cli(["detect", str(img), "--weights", "none", "--out", str(out), "--slice-overlap", "0.5"])
    assert result.exit_code == 1 and "--slice-overlap has no effect without --slice" in result.output
    assert not out.exists()
