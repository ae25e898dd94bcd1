"""Shared fixtures and factories, one of each for the whole suite.

- ``coco_tiny``: the real COCO slice (skips where absent; CI requires it)
- ``tiny_config`` / ``export_config``: CPU-sized model configurations
- ``build_model(**overrides)``: a seeded tiny detector in eval mode (``tiny_config`` + overrides)
- ``tiny_model``, ``tiny_checkpoint``, ``detect_weights``: a model and its saved weights
- ``make_image(path, size, seed)``: a seeded noise image file
- ``write_coco(path, images, annotations, categories)``: a COCO annotation file
- ``make_video(path, frames, size, paint=...)``: a small H.264 video drawn frame by frame (PyAV)
- ``make_targets()``: training targets for two images
- ``cli(args, **kwargs)``: ``fpn`` invoked in-process on a wide terminal, its result returned
- ``train_then_reload(*train_args)``: the end-to-end scenario (train on a synthetic set, then
  detect, eval, inspect-levels and info on the checkpoint), written once
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

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


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """``--backend auto``'s probe cache (fpncli/inference/probe.py) in a folder of the session's
    own: tests never read or write the user's ~/.cache/fpncli."""
    old = os.environ.get("FPN_CACHE_DIR")
    os.environ["FPN_CACHE_DIR"] = str(tmp_path_factory.mktemp("fpn-cache"))
    yield
    if old is None:
        os.environ.pop("FPN_CACHE_DIR", None)
    else:
        os.environ["FPN_CACHE_DIR"] = old


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
def build_model(tiny_config):
    """``build_model(**overrides)``: a seeded (``torch.manual_seed(0)``), randomly initialised
    detector in eval mode, from ``tiny_config`` with ``overrides`` (any ModelConfig field)."""
    from fpncli.modeling.detector import build_model as build

    def make(**overrides):
        torch.manual_seed(0)
        return build(tiny_config.replace(**overrides) if overrides else tiny_config).eval()

    return make


@pytest.fixture
def tiny_model(build_model):
    """A seeded, randomly initialised tiny detector in eval mode."""
    return build_model()


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


def _write_image(
    path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, mode: str = "RGB", **save
) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save)
    return path


@pytest.fixture(scope="session")
def make_image():
    """``make_image(path, size=(64, 48), seed=0, mode="RGB", **save)``: a seeded noise image
    at ``path`` (converted to ``mode``; parent folders made; format from the suffix, ``save``
    passed to ``PIL.Image.save``, e.g. ``exif=``); returns ``path``."""
    return _write_image


def _write_coco(
    path: Path,
    images: Sequence[dict] = (),
    annotations: Sequence[dict] = (),
    categories: Sequence[dict] = (),
    **extra,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": list(images), "annotations": list(annotations), "categories": list(categories)}
    path.write_text(json.dumps({**data, **extra}))
    return path


@pytest.fixture(scope="session")
def write_coco():
    """``write_coco(path, images=(), annotations=(), categories=(), **extra)``: a COCO
    annotation file with these lists (and any ``extra`` top-level keys) at ``path``, parent
    folders made; returns ``path``."""
    return _write_coco


def _write_video(
    path: Path,
    frames: int = 6,
    size: tuple[int, int] = (64, 48),
    rate: int = 10,
    paint=None,
    options: dict | None = None,
) -> Path:
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream("mpeg4" if path.suffix == ".avi" else "libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    for i in range(frames):
        rgb = np.full((size[1], size[0], 3), 40, dtype=np.uint8)
        if paint is not None:
            paint(i, rgb)
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="session")
def make_video():
    """``make_video(path, frames=6, size=(64, 48), rate=10, paint=None, options=None)``: an
    H.264 video (MPEG-4 Part 2 for ``.avi``; needs PyAV) of ``frames`` frames at ``rate`` fps,
    each a dark grey ``uint8 [H, W, 3]`` RGB array that ``paint(i, rgb)`` draws frame ``i`` on
    in place; ``options``: the muxer's (e.g. ``{"movflags": "faststart"}``); returns ``path``."""
    return _write_video


@pytest.fixture(scope="session")
def cli():
    """``cli(args, **kwargs)``: ``fpn <args>`` run in-process (typer's CliRunner) on a
    400-column terminal, so that no line of the output wraps; returns the click Result.
    ``kwargs`` go to ``CliRunner.invoke`` (``input``, ``env``, ``terminal_width``...)."""
    from typer.testing import CliRunner

    from fpncli.cli.app import app

    runner = CliRunner()

    def invoke(args: Sequence[str], **kwargs):
        kwargs.setdefault("terminal_width", 400)
        return runner.invoke(app, [str(a) for a in args], **kwargs)

    return invoke


@pytest.fixture
def train_then_reload(tmp_path, cli):
    """The end-to-end scenario, once for every neck that wants it: ``fpn data synth`` (4 train,
    2 val images), ``fpn train`` for one iteration at 64-96 px with ``train_args`` (e.g.
    ``"--neck", "rfp"``), optionally resumed up to ``resume_iters``, then ``detect``, ``eval``,
    ``inspect-levels`` and ``info --json`` on its ``last.pt``. Every command must succeed;
    returns their results and paths for the test's own assertions."""
    from fpncli.data.synth import synthesize

    def run(*train_args: str, resume_iters: int | None = None) -> SimpleNamespace:
        data = tmp_path / "data"
        synthesize(data, train=4, val=2, seed=0)
        run_dir = tmp_path / "run"
        common = ["--workers", "0", "--min-size", "64", "--max-size", "96", "--batch-size", "2"]
        args = ["train", "--data", data, "--preset", "tiny", "--out", run_dir, *common]
        trained = cli([*args, "--iters", "1", "--eval-every", "-1", "--log-every", "1", *train_args])
        assert trained.exit_code == 0, trained.output
        resumed = None
        if resume_iters is not None:
            resumed = cli(["train", "--resume", run_dir, "--iters", str(resume_iters), "--workers", "0"])
            assert resumed.exit_code == 0, resumed.output
        ckpt = run_dir / "last.pt"
        val = data / "val"
        image = sorted(val.iterdir())[0]
        ann = sorted((data / "annotations").glob("instances_val*.json"))[0]
        detect = cli(["detect", val, "--weights", ckpt, "--out", tmp_path / "det"])
        assert detect.exit_code == 0, detect.output
        evaluated = cli(
            ["eval", "--weights", ckpt, "--coco", ann, "--images", val, "--out", tmp_path / "eval"]
        )
        assert evaluated.exit_code == 0, evaluated.output
        inspected = cli(
            ["inspect-levels", image, "--weights", ckpt, "--score-thr", "0", "--out", tmp_path / "lv"],
            terminal_width=200,
        )
        assert inspected.exit_code == 0, inspected.output
        info = cli(["info", "--weights", ckpt, "--json"])
        assert info.exit_code == 0, info.output
        return SimpleNamespace(
            data=data, run=run_dir, checkpoint=ckpt, image=image, train=trained, resume=resumed,
            detect=detect, eval=evaluated, inspect=inspected, info=json.loads(info.output),
            det_out=tmp_path / "det", levels_out=tmp_path / "lv",
        )  # fmt: skip

    return run
