"""The paper's level equation (one pure function) and the stride contract."""

import math

import pytest
import torch

from fpncli.modeling.levels import LevelSpec, assign_level, check_strides


def _square(side: float) -> list[float]:
    return [10.0, 20.0, 10.0 + side, 20.0 + side]


@pytest.mark.parametrize(
    "side, level",
    [(224, 4), (112, 3), (448, 5), (223.9, 3), (447.9, 4), (2, 2), (1e-3, 2), (5000, 5), (56, 2), (111.9, 2)],
)
def test_square_boxes_follow_equation(side, level):
    assert assign_level(torch.tensor([_square(side)])).tolist() == [level]


def test_equation_uses_area_not_side():
    # 112 x 448 has sqrt(area) = 224, so P4, although neither side is 224.
    assert assign_level(torch.tensor([[0.0, 0.0, 112.0, 448.0]])).tolist() == [4]


def test_matches_closed_form_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(500, 2, generator=g) * 500
    wh = torch.rand(500, 2, generator=g) * 900 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    expected = [
        min(5, max(2, math.floor(4 + math.log2(math.sqrt(w * h) / 224) + 1e-6))) for w, h in wh.tolist()
    ]
    assert assign_level(boxes).tolist() == expected


def test_zero_area_and_inverted_boxes_go_to_finest_level():
    boxes = torch.tensor([[5.0, 5.0, 5.0, 50.0], [5.0, 5.0, 50.0, 5.0], [50.0, 50.0, 10.0, 10.0]])
    assert assign_level(boxes).tolist() == [2, 2, 2]


def test_empty_input():
    out = assign_level(torch.zeros((0, 4)))
    assert out.shape == (0,) and out.dtype == torch.int64


def test_custom_range_clamps():
    boxes = torch.tensor([_square(10), _square(2000)])
    assert assign_level(boxes, min_level=3, max_level=4).tolist() == [3, 4]


def test_check_strides_accepts_pyramid_and_rejects_gaps():
    check_strides([LevelSpec(f"p{k}", 8, 2**k) for k in range(2, 7)])
    with pytest.raises(ValueError, match="log2-contiguous"):
        check_strides([LevelSpec("p2", 8, 4), LevelSpec("p4", 8, 16)])
    with pytest.raises(ValueError, match="power of two"):
        check_strides([LevelSpec("x", 8, 12)])
