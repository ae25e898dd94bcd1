"""The neck ablation: proposal recall, the small-object verdict, and one tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from fpncli.errors import FpnError

DATASET = {
    "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 60, 50], "area": 3000, "iscrowd": 0},
    ],
    "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
}


def test_proposal_recall_is_class_agnostic_and_cut_at_max_dets():
    from fpncli.evaluation.coco_eval import proposal_recall

    exact = proposal_recall(DATASET, {1: [[10, 10, 30, 30]], 2: [[0, 0, 60, 50]]})
    assert exact["AR100"] == exact["AR1k"] == exact["AR1k_s"] == exact["AR1k_m"] == 1.0
    assert exact["AR1k_l"] == -1  # no large object in the set: COCO's -1, not 0
    # The right box for image 1 is the 101st proposal: found within 1000, not within 100.
    late = proposal_recall(DATASET, {1: [[50, 50, 60, 60]] * 100 + [[10, 10, 30, 30]], 2: [[0, 0, 60, 50]]})
    assert late["AR100"] == 0.5 and late["AR1k"] == 1.0 and late["AR1k_s"] == 1.0


def test_proposal_recall_empty_and_partial():
    from fpncli.evaluation.coco_eval import proposal_recall

    none = proposal_recall(DATASET, {})
    assert none["AR1k"] == 0.0 and none["num_proposals"] == 0
    # A box shifted by half its width (IoU 1/3) matches at no threshold of 0.50:0.95.
    half = proposal_recall(DATASET, {1: [[20, 10, 40, 30]], 2: [[0, 0, 60, 50]]})
    assert half["AR1k_s"] == 0.0 and half["AR1k_m"] == 1.0


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_proposal_recall_same_on_every_backend(backend):
    """The ablation's recall goes through the same COCOeval driver as `fpn eval`, so
    --backend applies to it too; both backends give the same numbers."""
    from fpncli.evaluation.coco_eval import available_backends, proposal_recall

    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    g = torch.Generator().manual_seed(0)
    proposals = {}
    for image_id in (1, 2):
        xy = torch.rand(300, 2, generator=g) * 80
        wh = torch.rand(300, 2, generator=g) * 40 + 2
        boxes = torch.cat([xy, xy + wh], dim=1)
        # and, 150th in the ranking, the object's box shifted by a few pixels
        gt = next(a["bbox"] for a in DATASET["annotations"] if a["image_id"] == image_id)
        near = torch.tensor([[gt[0] + 2, gt[1] + 1, gt[0] + gt[2] + 2, gt[1] + gt[3] + 1]])
        proposals[image_id] = torch.cat([boxes[:149], near, boxes[149:]]).tolist()
    ours = proposal_recall(DATASET, proposals, backend=backend)
    reference = proposal_recall(DATASET, proposals, backend="pycocotools")
    assert ours == pytest.approx(reference, abs=1e-9)
    assert ours["AR100"] < ours["AR1k"] <= 1 and ours["num_proposals"] == 602


def test_rpn_proposals_in_image_pixels_and_settings_restored(tiny_model):
    from fpncli.analysis.ablation import rpn_proposals

    before = dict(tiny_model.rpn._post_nms_top_n), dict(tiny_model.rpn._pre_nms_top_n)
    torch.manual_seed(0)
    images = [torch.rand(3, 90, 140), torch.rand(3, 120, 100)]
    out = rpn_proposals(tiny_model, images, top_n=400)
    assert (dict(tiny_model.rpn._post_nms_top_n), dict(tiny_model.rpn._pre_nms_top_n)) == before
    for boxes, img in zip(out, images):
        # More than the preset's 150 post-NMS proposals: the top-n was raised for this call.
        assert 150 < len(boxes) <= 400
        assert (
            float(boxes[:, 2].max()) <= img.shape[2] + 1e-3
            and float(boxes[:, 3].max()) <= img.shape[1] + 1e-3
        )


def test_single_level_necks_get_the_pyramids_rpn_candidates(tiny_config):
    from fpncli.analysis.ablation import equal_pre_nms
    from fpncli.modeling.detector import build_model

    fpn, c4 = build_model(tiny_config).eval(), build_model(tiny_config.replace(neck="c4")).eval()
    assert equal_pre_nms(fpn, 1000) == 1000 and equal_pre_nms(c4, 1000) == 5000
    with c4.inference_limits(rpn_pre_nms_top_n=7, rpn_post_nms_top_n=3):
        assert c4.rpn.pre_nms_top_n() == 7 and c4.rpn.post_nms_top_n() == 3
    assert c4.rpn._pre_nms_top_n["testing"] == tiny_config.rpn_pre_nms_top_n_test


def test_budget_plan_scales_and_rejects_nonpositive():
    from fpncli.analysis.ablation import budget_plan

    one, ten = budget_plan(1.0), budget_plan(10)
    assert ten["iters"] == 10 * one["iters"] and ten["train_images"] == 10 * one["train_images"]
    assert budget_plan(1e-6)["iters"] >= 2
    with pytest.raises(FpnError, match="budget"):
        budget_plan(0)


def _row(neck, s, m, large, aps, apm, apl):
    return {"neck": neck, "AR1k_s": s, "AR1k_m": m, "AR1k_l": large, "APs": aps, "APm": apm, "APl": apl}


def test_small_object_claim_from_the_numbers():
    from fpncli.analysis.ablation import claim_sentence, small_object_claim

    rows = [
        _row("c4", 0.30, 0.50, 0.60, 0.10, 0.30, 0.40),
        _row("c5", 0.20, 0.55, 0.65, 0.05, 0.32, 0.45),
        _row("fpn", 0.45, 0.60, 0.66, 0.18, 0.35, 0.44),
    ]
    claim = small_object_claim(rows)
    assert claim["holds"] and claim["AR1k"]["largest"] == "AR1k_s" and claim["AP"]["largest"] == "APs"
    assert claim["AR1k"]["gains"]["AR1k_s"] == pytest.approx(15.0)  # against the better baseline, c4
    assert "held" in claim_sentence(claim)
    rows[2] = _row("fpn", 0.31, 0.70, 0.66, 0.18, 0.35, 0.44)
    claim = small_object_claim(rows)
    assert not claim["holds"] and claim["AR1k"]["largest"] == "AR1k_m"
    assert "did not fully hold" in claim_sentence(claim)
    assert small_object_claim(rows[:2]) is None  # no FPN row


def test_bad_arguments_are_user_errors(tmp_path):
    from fpncli.analysis.ablation import run_ablation

    with pytest.raises(FpnError, match="unknown neck 'fpx'"):
        run_ablation(tmp_path / "a", ["fpn", "fpx"])
    with pytest.raises(FpnError, match="unknown modifier 'xyz'"):
        run_ablation(tmp_path / "a", ["fpn+xyz"])
    with pytest.raises(FpnError, match="the c4 neck has one"):
        run_ablation(tmp_path / "a", ["c4+afp"])
    with pytest.raises(FpnError, match="listed twice"):
        run_ablation(tmp_path / "a", ["fpn+afp", "fpn+afp"])
    # A row's name says what trains: fpn+afp+soft used to train soft selection alone.
    with pytest.raises(FpnError, match=r"row 'fpn\+afp\+soft': soft and afp both set roi_pooling"):
        run_ablation(tmp_path / "a", ["fpn+afp+soft"])
    with pytest.raises(FpnError, match=r"row 'augfpn\+level\+soft': soft and level both set"):
        run_ablation(tmp_path / "a", ["augfpn+level+soft"])
    with pytest.raises(FpnError, match=r"sac is given twice"):
        run_ablation(tmp_path / "a", ["fpn+sac+sac"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(FpnError, match="nasfpn-norm"):
        run_ablation(tmp_path / "a", ["nasfpn"], neck_options={"nasfpn_norm": "ln"})
    with pytest.raises(FpnError, match="no necks"):
        run_ablation(tmp_path / "a", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FpnError, match="instances_train"):
        run_ablation(tmp_path / "b", ["fpn"], data=str(tmp_path / "empty"))


def test_cli_reports_a_bad_neck_in_one_line(cli):

    result = cli(["ablation", "--necks", "fpn,fpx", "--quick"])
    assert result.exit_code == 1
    assert "unknown neck 'fpx'" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_ablation_end_to_end(tmp_path):
    """Two necks, two training iterations each: the table, its files, checkpoints that reload,
    and a second call that reuses the finished necks instead of retraining."""
    from fpncli.analysis.ablation import run_ablation
    from fpncli.modeling.weights import load_detector

    events = []
    result = run_ablation(tmp_path / "abl", ["fpn", "c4"], budget=0.008, progress=events.append)
    rows = result["rows"]
    assert [r["neck"] for r in rows] == ["fpn", "c4"]
    for row in rows:
        for key in ("AR100", "AR1k", "AR1k_s", "AR1k_m", "AR1k_l", "AP50", "AP", "APs", "APm", "APl"):
            assert row[key] == -1 or 0 <= row[key] <= 1, (key, row[key])
        assert row["AR100"] <= row["AR1k"]
        assert row["seconds_per_image"] > 0 and row["settings"]["iters"] == 2
        assert load_detector(row["checkpoint"]).model.config.neck == row["neck"]
    fpn, c4 = rows
    assert c4["rpn_levels"] == ["c4"] and fpn["rpn_levels"][0] == "p2"
    # c4 carries ResNet's conv5 stage but never runs it: it is not counted as used.
    assert c4["parameters_used"] < c4["parameters"] - 1_000_000
    assert fpn["parameters_used"] == fpn["parameters"]
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["neck"] for r in saved["rows"]] == ["fpn", "c4"] and saved["claim"] is not None
    markdown = (tmp_path / "abl" / "ablation.md").read_text()
    assert markdown.startswith("| neck | AR100") and markdown.count("\n| ") == 2  # one line per neck
    again = []
    second = run_ablation(tmp_path / "abl", ["c4"], budget=0.008, progress=again.append)
    assert [e["event"] for e in again] == ["neck_cached"]
    assert second["rows"][0]["AP"] == c4["AP"]
    # Without its result (e.g. measured differently), the finished training is re-measured, not redone.
    (tmp_path / "abl" / "runs" / "c4" / "result.json").unlink()
    third = []
    remeasured = run_ablation(tmp_path / "abl", ["c4"], budget=0.008, progress=third.append)
    assert not any(e["event"] in ("start", "iter") for e in third)
    assert "not retrained" in third[1]["what"]
    assert remeasured["rows"][0]["AR1k"] == c4["AR1k"] and remeasured["rows"][0]["AP"] == c4["AP"]


def test_rows_name_a_neck_and_its_roi_pooling():
    from fpncli.analysis.ablation import DEFAULT_ROWS, SURVEY_ROWS, parse_row
    from fpncli.analysis.ablation.run import _train_key

    assert parse_row("panet+afp") == ("panet", {"roi_pooling": "afp"}) and parse_row("nasfpn") == (
        "nasfpn",
        {},
    )
    assert {"nasfpn", "fpn+afp", "panet+afp"} <= set(SURVEY_ROWS)
    assert set(DEFAULT_ROWS) == {"c4", "c5", "fpn", "panet", "bifpn"}  # the budgeted default run
    settings = {
        "seed": 0,
        "preset": "tiny",
        "data": "d",
        "iters": 2,
        "batch_size": 4,
        "train_images": 8,
        "val_images": 4,
        "bifpn_repeats": 2,
        "nasfpn_stacks": 3,
        "nasfpn_norm": "gn",
    }
    # Eqn. (1) rows keep the key they had before RoI pooling was an option (old runs still match).
    assert _train_key(settings, "fpn") == {k: v for k, v in settings.items() if "fpn_" not in k} | {
        "neck": "fpn"
    }
    afp = _train_key(settings, "nasfpn+afp")
    assert afp["roi_pooling"] == "afp" and afp["nasfpn_stacks"] == 3 and afp["neck"] == "nasfpn"


def test_backbone_weights_reach_every_rows_training_and_its_cache_key(tmp_path, monkeypatch):
    """--backbone-weights goes to each row's training (as fpn train --backbone-weights) and into
    the key that decides whether a finished row is reused; from scratch, the key is as before."""
    import torchvision

    import fpncli.training.train as train_module
    from fpncli.analysis.ablation import run_ablation
    from fpncli.analysis.ablation.run import _train_key

    with pytest.raises(FpnError, match=r"missing\.pt: --backbone-weights must be none, imagenet or a file"):
        run_ablation(tmp_path / "a", ["fpn"], backbone_weights=str(tmp_path / "missing.pt"))
    torch.manual_seed(0)
    resnet = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    seen = []

    class Stop(Exception):
        pass

    def fake_train(cfg, progress=None):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(train_module, "train", fake_train)
    with pytest.raises(Stop):
        run_ablation(tmp_path / "b", ["rfp"], budget=0.01, backbone_weights=str(resnet))
    assert seen[0].backbone_weights == str(resnet) and seen[0].neck == "rfp"
    settings = {k: 1 for k in ("seed", "preset", "data", "iters", "batch_size", "train_images", "val_images")}
    assert "backbone_weights" not in _train_key(settings, "fpn")
    assert _train_key({**settings, "backbone_weights": "imagenet"}, "fpn")["backbone_weights"] == "imagenet"
