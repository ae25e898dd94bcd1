"""Recording each detection's pyramid levels (fpn eval --analyze) leaves the detections as they
are, for every RoI pooling, and gives levels the model has."""

from __future__ import annotations

import pytest
import torch

from fpncli.modeling.levels import assign_level


@pytest.mark.parametrize("pooling", ["level", "afp", "soft"])
def test_recording_levels_keeps_the_detections(build_model, pooling, one_thread):
    model = build_model(roi_pooling=pooling, box_score_thresh=0.0)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 150, generator=g), torch.rand(3, 100, 90, generator=g)]
    prepared = [model.prepare_image(i) for i in images]
    sizes = [(120, 150), (100, 90)]
    with torch.no_grad():
        plain = model.detect_prepared(prepared, sizes)
        model.record_levels = True
        recorded = model.detect_prepared(prepared, sizes)
        model.record_levels = False
    rpn_ks = {model.levels[n].level for n in model.rpn_levels}
    roi_ks = {model.levels[n].level for n in model.roi_levels}
    for a, b in zip(plain, recorded):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
        assert set(b["rpn_level"].tolist()) <= rpn_ks
        assert set(b["roi_level"].tolist()) <= roi_ks
        assert "rpn_level" not in a


def test_eq1_level_is_the_proposals_level(build_model, one_thread):
    """With Eq. (1) pooling the RoI level is assign_level of the proposal, which the box head
    only nudges: most detections land on the level of their own (input-scale) box."""
    model = build_model(box_score_thresh=0.0)
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    model.record_levels = True
    with torch.no_grad():
        out = model.detect_prepared([model.prepare_image(image)], [(128, 160)])[0]
    scale = model.prepare_image(image).shape[-1] / 160
    pool = model.roi_heads.box_roi_pool
    own = assign_level(out["boxes"] * scale, pool.min_level, pool.max_level)
    assert (own == out["roi_level"]).float().mean() > 0.5
