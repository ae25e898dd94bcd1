"""Shared fixtures: the real COCO slice, tiny seeded models, temporary checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests read the CLI's output whole: a console as wide as any line, whatever the terminal (under
# pytest-xdist rich sees no terminal and would wrap at 80 columns, splitting long paths).
os.environ["COLUMNS"] = "400"

ROOT = Path(__file__).resolve().parents[1]
COCO_TINY = Path(os.environ.get("FPN_COCO_TINY", ROOT.parent / "shared" / "data" / "coco-tiny"))

# Two cores on CI: keep torch from oversubscribing them in every test process. Under
# pytest-xdist (the README's `-n auto`) the workers share the cores: one thread each, since a
# descheduled torch thread stalls every parallel op of a busy 2-core machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine every
    parallel op waits for a descheduled thread; one thread keeps these tests quick."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """``../shared/data/coco-tiny`` (80 train + 80 val COCO 2017 images). Skips where absent
    (a clone elsewhere); `.ci/run` fails when it is missing, so CI always runs these."""
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"COCO slice not found at {COCO_TINY}")
    return COCO_TINY


@pytest.fixture
def tiny_config():
    """A CPU-sized FPN configuration with three classes (non-contiguous category ids)."""
    from fpncli.config import preset_config

    return preset_config(
        "tiny",
        min_size=128,
        max_size=160,
        class_names=["circle", "square", "triangle"],
        category_ids=[1, 3, 7],
    )


def _export_config(**overrides):
    """A smaller, faster model than tiny_config for tests that export and run graphs: 64-96 px
    inputs, narrow neck and head."""
    from fpncli.config import preset_config

    base = dict(
        min_size=64,
        max_size=96,
        fpn_channels=16,
        box_head_dim=32,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        class_names=["circle", "square", "triangle"],
        category_ids=[1, 3, 7],
    )
    base.update(overrides)
    return preset_config("tiny", **base)


@pytest.fixture(scope="session")
def export_config():
    """``export_config(**overrides)``: the export tests' small model configuration."""
    return _export_config


@pytest.fixture
def tiny_model(tiny_config):
    """A seeded, randomly initialised tiny detector in eval mode."""
    from fpncli.modeling.detector import build_model

    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model) -> Path:
    """The tiny model saved as an fpncli checkpoint."""
    from fpncli.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "tiny.pt", tiny_model)


@pytest.fixture
def make_targets():
    """Fresh training targets for two images (the tiny config's labels 1 and 3): one with a
    large and a small box (xyxy pixels), one without objects (a background-only sample)."""

    def targets() -> list[dict[str, torch.Tensor]]:
        return [
            {
                "boxes": torch.tensor([[5.0, 6.0, 30.0, 35.0], [40.0, 10.0, 48.0, 17.0]]),
                "labels": torch.tensor([1, 3]),
            },
            {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
        ]

    return targets


@pytest.fixture
def detect_weights(tmp_path, tiny_model) -> str:
    """The tiny model saved as a checkpoint with a 0 score threshold, so that even a random
    model yields detections to draw and count."""
    from fpncli.checkpoint import save_checkpoint

    tiny_model.config = tiny_model.config.replace(box_score_thresh=0.0)
    return str(save_checkpoint(tmp_path / "tiny.pt", tiny_model))


def _write_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def make_image():
    """``make_image(path, size=(64, 48), seed=0)``: a seeded noise RGB image at ``path``
    (parent folders made, format from the suffix); returns ``path``."""
    return _write_image
