"""Weights made by torchvision give torchvision's detections, on every image size.

Our R50-FPN is torchvision's ``fasterrcnn_resnet50_fpn`` weight for weight; these tests check
the rest of what torchvision's builder does: its anchor grid (``padded_size // feature_size``,
not 64 px, on odd-sized P6 maps), FrozenBatchNorm eps 0.0 for COCO_V1, and the whole
`fpn detect` / `fpn eval` pipeline against torchvision's stock ``model([image])`` loop.

Sizes: at min_size 224 a 640x480 photo is resized to 224x298 and padded to 224x320, so P5 is
7x10 and P6 4x5: torchvision's P6 anchors are 56 and 64 px apart, not 64 and 64 (what
happens to most photos at 800 px: 800x1088 -> P6 13x17, 61 and 64 px).
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision.models import resnet50
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d
from torchvision.transforms.functional import pil_to_tensor, to_tensor

from fpncli.config import ModelConfig
from fpncli.data.images import read_image
from fpncli.modeling.anchors import LevelAnchorGenerator
from fpncli.modeling.coco_classes import COCO_V1_CATEGORIES, UNUSED_CLASS
from fpncli.modeling.detector import build_model
from fpncli.modeling.hub import COCO_WEIGHTS_URL, hub_cache_path
from fpncli.modeling.levels import LevelSpec
from fpncli.modeling.torchvision_keys import (
    config_from_torchvision_state_dict,
    fpncli_to_torchvision,
    torchvision_to_fpncli,
)
from fpncli.modeling.weights import load_detector, load_model_state

SIZE, MAX_SIZE = 224, 800  # shorter side; odd P5/P6 maps for 4:3 photos (see above)
BOX_TOL, SCORE_TOL = 1e-3, 1e-4  # the tolerances for float-rounding differences


def _seeded_state_dict(model: torch.nn.Module, small_var: bool = False) -> dict:
    """Random weights *and* normalisation statistics, so every parameter matters.

    ``small_var``: a tenth of the channels of every norm layer get running variances of
    1e-5..1e-4 (and gamma = sqrt(var), so their outputs keep the usual scale), where
    FrozenBatchNorm's eps (0 vs 1e-5) changes the output by up to 30%.
    """
    g = torch.Generator().manual_seed(1234)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) * 0.5 + 0.75
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = torch.randn(value.shape, generator=g) * 0.05
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[key] = torch.randn(value.shape, generator=g) / fan_in**0.5
    if small_var:
        for key in [k for k in state if k.endswith("running_var")]:
            small = torch.rand(state[key].shape, generator=g) < 0.1
            var = 1e-5 + torch.rand(state[key].shape, generator=g) * 9e-5
            state[key] = torch.where(small, var, state[key])
            gamma = key.replace("running_var", "weight")
            state[gamma] = torch.where(small, var.sqrt(), state[gamma])
    return state


def _trained_like(state: dict) -> dict:
    """Make seeded weights behave like trained ones where float rounding is concerned.

    Box regression outputs of the seeded heads are ~10x a trained model's (median |delta|
    ~3 against ~0.3), and a box moves by ``delta_error / 10 * box_width``: with them,
    torchvision's own boxes move by up to 0.007 px between 1 and 2 threads. A trained
    detector's deltas are small, so they are scaled to that range here. The classifier gets
    a strong background logit (a handful of confident detections per image, like trained
    weights) and never picks COCO_V1's "N/A" placeholders.
    """
    state = dict(state)
    for key in ("roi_heads.box_predictor.bbox_pred", "rpn.head.bbox_pred"):
        state[f"{key}.weight"] = state[f"{key}.weight"] * 0.1
        state[f"{key}.bias"] = state[f"{key}.bias"] * 0.1
    weight = state["roi_heads.box_predictor.cls_score.weight"].clone()
    bias = state["roi_heads.box_predictor.cls_score.bias"].clone()
    bias[0] += 8.0
    bias[1] += 2.5  # "person", the most common COCO class: some detections hit ground truth
    for i, name in enumerate(COCO_V1_CATEGORIES):
        if name == UNUSED_CLASS:
            weight[i] = 0.0
            bias[i] = -1e4
    state["roi_heads.box_predictor.cls_score.weight"] = weight
    state["roi_heads.box_predictor.cls_score.bias"] = bias
    return state


def _reference(state: dict, **kwargs) -> torch.nn.Module:
    """torchvision's model for a state dict with BatchNorm statistics (``weights_backbone=None``)."""
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs).eval()
    model.load_state_dict(state)
    return model


def _coco_v1_reference(**kwargs) -> torch.nn.Module:
    """What ``fasterrcnn_resnet50_fpn(weights=COCO_V1)`` builds, without the download:
    FrozenBatchNorm2d, then ``overwrite_eps(model, 0.0)``."""
    from torchvision.models.detection._utils import overwrite_eps

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = FasterRCNN(backbone, num_classes=91, **kwargs).eval()
    overwrite_eps(model, 0.0)
    return model


def _photos(coco_tiny, n_landscape: int = 1, n_portrait: int = 1) -> list:
    """Real photos: landscape ones as they are, portrait ones made by transposing others."""
    files = sorted((coco_tiny / "val2017").glob("*.jpg"))
    landscape = [f for f in files if Image.open(f).size == (640, 480)]
    return landscape[:n_landscape], landscape[n_landscape : n_landscape + n_portrait]


def _tensor(path, portrait: bool = False) -> torch.Tensor:
    x = pil_to_tensor(read_image(path)).float() / 255
    return x.transpose(1, 2).contiguous() if portrait else x


def _assert_same(expected: list[dict], actual: list[dict]) -> None:
    """Same detections: labels equal, scores within 1e-6, boxes within 1e-3 px."""
    for exp, act in zip(expected, actual, strict=True):
        assert len(exp["boxes"]) > 0  # something to compare
        assert torch.equal(exp["labels"], act["labels"])
        assert (exp["scores"] - act["scores"]).abs().max() <= 1e-6
        assert (exp["boxes"] - act["boxes"]).abs().max() <= BOX_TOL


# ----------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("padded", [(352, 480), (800, 1088), (96, 128), (32, 64), (480, 352)])
def test_torchvision_grid_is_torchvisions_anchor_generator(padded):
    sizes = ((32,), (64,), (128,), (256,), (512,))
    reference = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    levels = [LevelSpec(f"p{k}", 8, 2**k) for k in range(2, 7)]
    ours = LevelAnchorGenerator(levels, [tuple(s) for s in sizes], (0.5, 1.0, 2.0), grid="torchvision")
    h, w = padded
    maps = []
    for _ in range(4):  # the ResNet/FPN sizes: ceil at each stride-2 step from the padded input
        h, w = (h + 1) // 2 if maps else h // 4, (w + 1) // 2 if maps else w // 4
        maps.append(torch.zeros(1, 8, h, w))
    maps.append(torch.zeros(1, 8, (h + 1) // 2, (w + 1) // 2))  # P6: max-pool, kernel 1, stride 2
    images = ImageList(torch.zeros(2, 3, *padded), [padded, padded])
    expected = reference(images, maps)
    actual = ours(images, maps)
    assert all(torch.equal(e, a) for e, a in zip(expected, actual, strict=True))
    # The declared-stride grid agrees where torchvision's spacing is the stride (or a map
    # has one cell along that axis, so the spacing is never used).
    strided = LevelAnchorGenerator(levels, [tuple(s) for s in sizes], (0.5, 1.0, 2.0), grid="stride")
    differs = any(
        m.shape[-2 + i] > 1 and padded[i] // m.shape[-2 + i] != 2 ** (k + 2)
        for k, m in enumerate(maps)
        for i in (0, 1)
    )
    assert torch.equal(strided(images, maps)[0], expected[0]) != differs
    assert differs == (padded in ((352, 480), (800, 1088), (96, 128), (480, 352)))


def test_unknown_anchor_grid_is_a_clear_error(tiny_config):
    from fpncli.errors import FpnError

    with pytest.raises(FpnError, match="unknown anchor grid 'pixels'"):
        build_model(tiny_config.replace(anchor_grid="pixels"))
    with pytest.raises(FpnError, match="frozen_bn_eps must be >= 0"):
        build_model(tiny_config.replace(frozen_bn_eps=-1.0))


# ----------------------------------------------------------------------------- whole model


@pytest.mark.slow
def test_same_detections_as_torchvision_on_odd_sizes_portrait_landscape_and_batches(coco_tiny):
    state = _trained_like(_seeded_state_dict(_reference_shell()))
    reference = _reference(state, min_size=SIZE, max_size=MAX_SIZE)

    cfg = config_from_torchvision_state_dict(state, min_size=SIZE, max_size=MAX_SIZE)
    assert (cfg.backbone, cfg.fpn_channels, cfg.box_head_dim, len(cfg.class_names)) == (
        "resnet50",
        256,
        1024,
        90,
    )
    assert (cfg.anchor_grid, cfg.norm, cfg.frozen_bn_eps) == ("torchvision", "bn", 1e-5)
    ours = build_model(cfg).eval()
    load_model_state(ours, torchvision_to_fpncli(state), "seeded state dict")
    # The mapping is a bijection: nothing lost, nothing added.
    assert fpncli_to_torchvision(ours.state_dict()).keys() == state.keys()

    (landscape,), (portrait,) = _photos(coco_tiny)
    images = [_tensor(landscape), _tensor(portrait, portrait=True)]
    with torch.no_grad():
        # Landscape alone (224x298, padded 224x320: P5 7x10, P6 4x5, anchors 56 and 64 px
        # apart), then with a portrait one in a batch of unequal sizes (padded 320x320:
        # P5 10x10, P6 5x5, 64 px). The proposals show the grid at work directly (P6's
        # 512 px anchors rarely survive to the final detections of a 224 px image).
        (ref_proposals, expected), (our_proposals, actual) = (_run(m, images[:1]) for m in (reference, ours))
        assert torch.equal(ref_proposals, our_proposals)
        _assert_same(expected, actual)
        _assert_same(reference(images), ours(images))
        # With the declared strides (what fpncli did before) the proposals differ.
        ours.rpn.anchor_generator.grid = "stride"
        before = _run(ours, images[:1], proposals_only=True)
        assert before.shape != ref_proposals.shape or not torch.allclose(before, ref_proposals, atol=BOX_TOL)
        ours.rpn.anchor_generator.grid = "torchvision"
        # Small images: 96 px shorter side, P5 3x4 and P6 2x2 (48 and 64 px apart).
        for model in (reference, ours):
            model.transform.min_size, model.transform.max_size = (96,), 160
        small = [images[0][:, :60, :90], images[1][:, :90, :50]]
        _assert_same(reference(small), ours(small))


def _run(model: torch.nn.Module, images: list[torch.Tensor], proposals_only: bool = False):
    """``GeneralizedRCNN.forward`` in eval mode, also returning image 0's RPN proposals
    (``Tensor[N, 4]`` xyxy, resized-image pixels)."""
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    if proposals_only:
        return proposals[0]
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    originals = [tuple(img.shape[-2:]) for img in images]
    return proposals[0], model.transform.postprocess(detections, batch.image_sizes, originals)


@pytest.mark.slow
def test_coco_v1_weights_run_with_eps_zero_from_the_hub_cache(coco_tiny, tmp_path, monkeypatch):
    """``--weights coco``: FrozenBatchNorm eps 0.0 and torchvision's grid, like the builder."""
    reference = _coco_v1_reference(min_size=SIZE, max_size=MAX_SIZE)
    state = _trained_like(_seeded_state_dict(reference, small_var=True))
    reference.load_state_dict(state)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub_cache_path(COCO_WEIGHTS_URL)
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    loaded = load_detector("coco", min_size=SIZE, max_size=MAX_SIZE)
    cfg = loaded.model.config
    assert (cfg.norm, cfg.frozen_bn_eps, cfg.anchor_grid) == ("frozen_bn", 0.0, "torchvision")
    (landscape,), _ = _photos(coco_tiny, n_portrait=0)
    image = _tensor(landscape)[:, :300, :]  # 224x477 -> padded 224x480: P5 7x15, P6 4x8
    with torch.no_grad():
        expected = reference([image])
        _assert_same(expected, loaded.model([image]))
        # The small variances make eps matter: the same file read as a plain torchvision
        # state dict (the builder's eps 1e-5) gives other detections.
        other = load_detector(str(path), min_size=SIZE, max_size=MAX_SIZE).model
        assert other.config.frozen_bn_eps == 1e-5
        changed = other([image])[0]
    assert len(changed["scores"]) != len(expected[0]["scores"]) or not torch.allclose(
        changed["scores"], expected[0]["scores"], atol=SCORE_TOL
    )


# ----------------------------------------------------------------------------- the pipeline


def _stock_loop(model: torch.nn.Module, paths: list) -> list[dict]:
    """The loop a torchvision user writes: PIL open, ``to_tensor``, ``model([x])``."""
    out = []
    with torch.no_grad():
        for p in paths:
            out.append(model([to_tensor(Image.open(p).convert("RGB"))])[0])
    return out


def _match(
    expected: dict,
    boxes,
    scores,
    labels,
    box_tol: float,
    score_tol: float,
    thresh: float = 0.05,
    top: int = 100,
) -> tuple[int, int]:
    """Match detections one to one (same label, boxes within ``box_tol`` px, scores within
    ``score_tol``); returns (matched, near ties). The only unmatched detections allowed are
    the documented near-tie case: float rounding decides which of two candidates scoring
    within ``score_tol`` of the cut (the score threshold or the last of the top 100) is kept.
    Anything else fails. Near ties count the unmatched detections of both sides."""
    got = list(zip(labels.tolist(), scores.tolist(), boxes.tolist()))
    free = list(range(len(got)))
    matched = ties = 0
    ref = list(zip(expected["labels"].tolist(), expected["scores"].tolist(), expected["boxes"].tolist()))
    cut = thresh
    if len(ref) == top or len(got) == top:  # the top-100 cut, not the threshold, decided
        cut = min(s for _, s, _ in ref + got)
    unmatched = []
    for label, score, box in ref:
        hit = next(
            (
                j
                for j in free
                if got[j][0] == label
                and abs(got[j][1] - score) <= score_tol
                and max(abs(u - v) for u, v in zip(got[j][2], box)) <= box_tol
            ),
            None,
        )
        if hit is None:
            unmatched.append(score)
        else:
            free.remove(hit)
            matched += 1
    unmatched += [got[j][1] for j in free]
    for score in unmatched:
        assert abs(score - cut) <= score_tol, f"detection with score {score:.5f} has no twin"
        ties += 1
    return matched, ties


@pytest.mark.slow
def test_detect_pipeline_gives_the_stock_loops_detections(coco_tiny, tmp_path, cli):
    """Decoding in workers, BN folding, Winograd, model replicas: torchvision's detections.

    (Batching equal padded sizes, the CUDA path, changes float rounding the same way; its
    detections are checked against unbatched ones in ``tests/test_predict.py``.)"""
    from fpncli.inference.predict import predict_images

    reference = _reference(
        _trained_like(_seeded_state_dict(_reference_shell())), min_size=SIZE, max_size=MAX_SIZE
    )
    weights = tmp_path / "torchvision.pth"
    torch.save(reference.state_dict(), weights)
    landscape, portrait = _photos(coco_tiny, n_landscape=1, n_portrait=1)
    # A real portrait photo: the landscape one turned upright, saved as a file.
    upright = tmp_path / "portrait.png"
    Image.open(portrait[0]).transpose(Image.Transpose.ROTATE_90).save(upright)
    paths = [*landscape, upright]
    expected = _stock_loop(reference, paths)
    assert sum(len(e["boxes"]) for e in expected) >= 3  # something to compare

    model = load_detector(str(weights), min_size=SIZE, max_size=MAX_SIZE).model
    assert model.config.anchor_grid == "torchvision"
    # `fpn detect`'s CPU default: BN folded, Winograd, single-threaded replicas that decode.
    results = list(predict_images(model, paths, optimize=True, cpu_processes=2))
    total_ties = 0
    for exp, res in zip(expected, results, strict=True):
        assert res.error is None
        matched, ties = _match(exp, res.boxes, res.scores, res.labels, BOX_TOL, SCORE_TOL)
        assert matched >= len(exp["boxes"]) - ties
        total_ties += ties
    # A near tie swaps one detection for another: two unmatched, one on each side.
    assert total_ties <= 2, f"{total_ties} detections unmatched at near ties"

    # `fpn detect` end to end: predictions.json rounds boxes to 0.01 px and scores to 1e-4.
    out = tmp_path / "out"
    args = ["detect", *map(str, paths), "--weights", str(weights), "--out", str(out), "--no-draw"]
    args += [
        "--min-size",
        str(SIZE),
        "--max-size",
        str(MAX_SIZE),
        "--score-thr",
        "0.05",
        "--quiet",
        "--workers",
        "2",
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())["images"]
    for exp, rec in zip(expected, records, strict=True):
        dets = rec["detections"]
        boxes = torch.tensor([d["box"] for d in dets]).reshape(-1, 4)
        scores = torch.tensor([d["score"] for d in dets])
        labels = torch.tensor([d["category_id"] for d in dets], dtype=torch.int64)
        matched, ties = _match(exp, boxes, scores, labels, 0.005 + BOX_TOL, 5e-5 + SCORE_TOL)
        assert matched >= len(exp["boxes"]) - ties and ties <= 2


def _reference_shell() -> torch.nn.Module:
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)


# ----------------------------------------------------------------------------- fpn eval


@pytest.mark.slow
def test_eval_matches_pycocotools_on_torchvisions_own_detections(coco_tiny, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from fpncli.evaluation.evaluate import METRIC_KEYS, evaluate_model

    size, n = 256, 3
    state = _trained_like(_seeded_state_dict(_reference_shell()))
    # Weaker background, and "car" (the largest objects in these images) favoured: 100
    # detections per image, some of which overlap ground truth, so the metrics are not zero.
    bias = state["roi_heads.box_predictor.cls_score.bias"].clone()
    bias[0] -= 4.0
    bias[3] += 4.0
    state["roi_heads.box_predictor.cls_score.bias"] = bias
    reference = _reference(state, min_size=size, max_size=448)
    weights = tmp_path / "torchvision.pth"
    torch.save(reference.state_dict(), weights)
    annotations = coco_tiny / "annotations" / "instances_val2017.json"
    model = load_detector(str(weights), min_size=size, max_size=448).model
    metrics = evaluate_model(
        model, annotations, coco_tiny / "val2017", max_images=n, backend="pycocotools", out_dir=tmp_path
    )

    gt = COCO(str(annotations))
    ids = list(gt.imgs)[:n]
    results = []
    detections = _stock_loop(reference, [coco_tiny / "val2017" / gt.imgs[i]["file_name"] for i in ids])
    for image_id, det in zip(ids, detections):
        for (x1, y1, x2, y2), score, label in zip(
            det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()
        ):
            # The rounding of fpn eval's detections.json (its documented results format).
            box = [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)]
            results.append(
                {"image_id": image_id, "category_id": label, "bbox": box, "score": round(score, 5)}
            )
    assert results, "no detections to evaluate"
    coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
    coco_eval.params.imgIds = ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    expected = dict(zip(METRIC_KEYS, coco_eval.stats.tolist()))
    actual = {k: metrics[k] for k in METRIC_KEYS}
    assert max(expected.values()) > 0  # the comparison is not between two columns of zeros
    for key in METRIC_KEYS:
        assert abs(actual[key] - expected[key]) <= 1e-6, key


def test_checkpoints_keep_grid_and_eps_and_old_ones_keep_theirs(tiny_config, tmp_path):
    from fpncli.checkpoint import read_checkpoint, save_checkpoint

    model = build_model(tiny_config.replace(norm="frozen_bn", anchor_grid="torchvision", frozen_bn_eps=0.0))
    assert model.backbone.bottom_up.bn1.eps == 0.0
    assert model.rpn.anchor_generator.grid == "torchvision"
    save_checkpoint(tmp_path / "new.pt", model)
    reloaded = load_detector(str(tmp_path / "new.pt")).model
    assert (reloaded.config.anchor_grid, reloaded.config.frozen_bn_eps) == ("torchvision", 0.0)
    assert reloaded.backbone.bottom_up.layer1[0].bn1.eps == 0.0
    # A checkpoint written before the fields existed was trained on the declared strides
    # with eps 1e-5, and keeps them.
    old = read_checkpoint(tmp_path / "new.pt")
    for key in ("anchor_grid", "frozen_bn_eps"):
        del old["model_config"][key]
    torch.save(old, tmp_path / "old.pt")
    old_model = load_detector(str(tmp_path / "old.pt")).model
    assert (old_model.config.anchor_grid, old_model.config.frozen_bn_eps) == ("stride", 1e-5)
    assert old_model.backbone.bottom_up.bn1.eps == 1e-5
    # New models (and so new trainings) use the declared strides.
    assert ModelConfig().anchor_grid == "stride"


def test_info_shows_grid_and_eps(tmp_path, cli):
    state = _reference_shell().state_dict()
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, tmp_path / "tv.pth")
    result = cli(["info", "--weights", tmp_path / "tv.pth", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["anchor_grid"], summary["norm"], summary["frozen_bn_eps"]) == (
        "torchvision",
        "frozen_bn",
        1e-5,
    )
    result = cli(["info", "--preset", "tiny"], terminal_width=160)
    assert result.exit_code == 0 and "anchor grid: stride" in result.output


def test_v2_weights_are_refused_with_a_clear_error(tmp_path):
    from fpncli.errors import FpnError

    path = tmp_path / "v2.pth"
    torch.save(
        {"backbone.body.conv1.weight": torch.zeros(1), "rpn.head.conv.1.0.weight": torch.zeros(1)}, path
    )
    with pytest.raises(FpnError, match=r"v2\.pth: .*fasterrcnn_resnet50_fpn_v2 weights are not supported"):
        load_detector(str(path))
