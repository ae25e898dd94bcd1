"""`fpn detect VIDEO --track` end to end: a video of three coloured squares moving by known
steps, decoded and encoded for real, and a detector whose boxes are controlled (the tiny
model's forward pass replaced by a colour finder), so that the ids can be checked exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fpncli.errors import FpnError
from fpncli.inference.detect import DetectOptions, run_detect

av = pytest.importorskip("av", reason='video tests need PyAV (pip install "fpncli[video]")')
pytest.importorskip("trackers", reason='tracking tests need trackers (pip install "fpncli[track]")')
pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE = 14, (128, 96)
# Per object: channel (0 red, 1 green, 2 blue) = its class label, (x, y) at frame 0, (dx, dy)
# per frame, 16x16 px. Red moves right across x = 64, blue left across it, green down beside it.
OBJECTS = {0: ((4, 6), (6, 0)), 1: ((40, 28), (0, 2)), 2: ((108, 74), (-5, 0))}
NAMES = {0: "circle", 1: "square", 2: "triangle"}  # tiny_config's classes 1, 2, 3
DIM = (6, 7)  # frames in which red is dim: the detector scores it 0.39, under --score-thr 0.5


def _paint(i: int, rgb: np.ndarray) -> None:
    for channel, ((x, y), (dx, dy)) in OBJECTS.items():
        x, y = x + dx * i, y + dy * i
        rgb[y : y + 16, x : x + 16] = 0
        rgb[y : y + 16, x : x + 16, channel] = 100 if channel == 0 and i in DIM else 230


def _clip(make_video, path: Path, frames: int = FRAMES, paint=_paint, **kw) -> Path:
    return make_video(path, frames=frames, size=SIZE, paint=paint, **kw)


def _find_squares(self, prepared, original_sizes, half=False):
    """The detector: per image (``Tensor[3, H, W]`` 0..1, unresized) one box per coloured
    square, scored by its brightness, kept over the model's own threshold."""
    out = []
    for image in prepared:
        boxes, scores, labels = [], [], []
        for channel in range(3):
            others = [c for c in range(3) if c != channel]
            mask = (image[channel] > 0.3) & (image[others].max(0).values < 0.25)
            # The square's rows and columns (a few stray pixels of codec bleed are not).
            xs = torch.nonzero(mask.sum(0) >= 6).flatten()
            ys = torch.nonzero(mask.sum(1) >= 6).flatten()
            if len(xs) < 4 or len(ys) < 4:
                continue
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            score = float(image[channel, y1:y2, x1:x2].mean())
            if score > self.roi_heads.score_thresh:
                boxes.append([x1, y1, x2, y2])
                scores.append(score)
                labels.append(channel + 1)
        out.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    return out


@pytest.fixture
def squares_detector(monkeypatch):
    """The tiny model sees pixels as they are and finds the coloured squares."""
    from fpncli.modeling.detector import FPNFasterRCNN

    monkeypatch.setattr(
        FPNFasterRCNN, "prepare_image", lambda self, image, inplace=False, min_size=None: image
    )
    monkeypatch.setattr(FPNFasterRCNN, "detect_prepared", _find_squares)


def _which(det: dict) -> int:
    """The object a reported detection is (by its class, one object per class)."""
    return {v: k for k, v in NAMES.items()}[det["label"]]


def _ids(video: dict) -> dict[int, set[int]]:
    ids: dict[int, set[int]] = {k: set() for k in OBJECTS}
    for frame in video["frames"]:
        for det in frame["detections"]:
            ids[_which(det)].add(det["track_id"])
    return ids


def _options(out: Path, weights: str, **kw) -> DetectOptions:
    return DetectOptions(weights=weights, out_dir=out, workers=0, optimize=False, track="bytetrack", **kw)


def test_track_end_to_end_ids_paths_counts_and_tables(
    tmp_path, make_video, squares_detector, detect_weights, cli
):
    clip = _clip(make_video, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    args = ["detect", clip, "--weights", detect_weights, "--out", out, "--no-optimize", "--workers", "0"]
    result = cli([*args, "--track", "--count-line", "64,0,64,96"])
    assert result.exit_code == 0, result.output
    (video,) = json.loads((out / "predictions.json").read_text())["videos"]
    assert video["tracking"] == {
        "tracker": "bytetrack",
        "score_thr": 0.5,
        "low_score_thr": 0.1,
        "every_nth_frame": 1,
    }
    ids = _ids(video)
    assert all(len(v) == 1 for v in ids.values()), ids  # no id switch
    assert set().union(*ids.values()) == {1, 2, 3}  # one id per object
    red = next(iter(ids[0]))
    # Frame 0: the tracks are not confirmed yet; red's dim frames: kept by the tracker, not reported.
    per_frame = {f["frame"]: sorted(_which(d) for d in f["detections"]) for f in video["frames"]}
    assert per_frame[0] == [] and per_frame[1] == [0, 1, 2]
    assert all(per_frame[i] == [1, 2] for i in DIM) and per_frame[8] == [0, 1, 2]
    # Boxes are where the squares are (within H.264's colour bleed).
    det = next(d for d in video["frames"][-1]["detections"] if d["track_id"] == red)
    assert det["box"] == pytest.approx([4 + 6 * 13, 6, 20 + 6 * 13, 22], abs=2)
    tracks = {t["track_id"]: t for t in video["tracks"]}
    assert tracks[red] == {
        "track_id": red,
        "label": "circle",
        "category_id": 1,
        "first_frame": 1,
        "last_frame": 13,
        "first_time": 0.1,
        "last_time": 1.3,
        "frames": 13 - len(DIM),
        "mean_score": pytest.approx(0.9, abs=0.03),
    }
    assert sorted(t["label"] for t in video["tracks"]) == ["circle", "square", "triangle"]
    # Red crosses x = 64 going right, blue going left; green stays beside the line.
    line = video["count_line"]
    assert line["directions"] == ["left", "right"]
    assert line["counts"] == {"right": {"circle": 1}, "left": {"triangle": 1}}
    assert line["total"] == {"left": 1, "right": 1}
    # The tables, and the annotated video: every frame, the line and red's path drawn.
    assert "tracks in clip.mp4: 3 (bytetrack, every frame)" in result.output
    assert "line 64,0,64,96 crossings" in result.output and "circle" in result.output
    with av.open(str(out / "clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES
    last = frames[-1].astype(int)
    r, g, b = last[30, 64]  # on the line, away from every square and label
    assert r > 180 and g > 150 and b < 110
    assert np.abs(last[14, 40] - 40).sum() > 90  # red's path at y = 14, far behind its box


def test_track_with_slice_tta_and_stride_keeps_one_id_per_object(
    tmp_path, make_video, squares_detector, detect_weights
):
    clip = _clip(make_video, tmp_path / "clip.mp4")
    summary = run_detect(
        [str(clip)],
        _options(tmp_path / "out", detect_weights, slice_size=64, tta="flip", vid_stride=2, draw=False),
    )
    (video,) = summary.predictions["videos"]
    assert [f["frame"] for f in video["frames"]] == list(range(0, FRAMES, 2))
    assert video["tracking"]["every_nth_frame"] == 2
    ids = _ids(video)
    assert all(len(v) == 1 for v in ids.values()) and set().union(*ids.values()) == {1, 2, 3}, ids


def test_empty_video_has_no_tracks(tmp_path, make_video, squares_detector, detect_weights, cli):
    clip = _clip(make_video, tmp_path / "empty.mp4", frames=4, paint=None)
    args = [
        "detect",
        clip,
        "--weights",
        detect_weights,
        "--out",
        tmp_path / "out",
        "--no-optimize",
        "--track",
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert video["tracks"] == [] and len(video["frames"]) == 4
    assert "tracks in empty.mp4: none" in result.output


def _noisy(i: int, rgb: np.ndarray) -> None:
    """The squares over faint noise (every frame costs bytes, so a cut file keeps some)."""
    rgb[:] = np.random.default_rng(i).integers(10, 70, rgb.shape, dtype=np.uint8)
    _paint(i, rgb)


def test_truncated_video_keeps_the_tracks_up_to_the_fault(
    tmp_path, make_video, squares_detector, detect_weights
):
    whole = _clip(make_video, tmp_path / "whole.mp4", paint=_noisy, options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "src" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) * 60 // 100])
    summary = run_detect([str(cut)], _options(tmp_path / "out", detect_weights))
    assert summary.videos_failed == 1
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    kept = len(video["frames"])
    assert 2 < kept < FRAMES
    ids = _ids(video)
    assert all(len(v) == 1 for v in ids.values()) and set().union(*ids.values()) == {1, 2, 3}
    assert max(t["last_frame"] for t in video["tracks"]) == kept - 1
    assert "frames" in summary.errors[0]["error"]


def test_ctrl_c_leaves_valid_json_with_the_tracks_so_far(
    tmp_path, make_video, squares_detector, detect_weights
):
    clip = _clip(make_video, tmp_path / "clip.mp4")

    def stop_at_frame_4(event: dict) -> None:
        if event["event"] == "frame" and event["frame"] == 4:
            raise KeyboardInterrupt

    summary = run_detect([str(clip)], _options(tmp_path / "out", detect_weights), progress=stop_at_frame_4)
    assert summary.interrupted
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert len(video["frames"]) == 5
    assert [(t["first_frame"], t["last_frame"], t["frames"]) for t in video["tracks"]] == [(1, 4, 4)] * 3


def test_bad_track_options_are_one_line_before_any_work(
    tmp_path, make_video, make_image, detect_weights, cli, monkeypatch
):
    clip = _clip(make_video, tmp_path / "clip.mp4", frames=1)
    out = tmp_path / "out"
    base = ["detect", clip, "--weights", detect_weights, "--out", out]
    for extra, message in [
        (
            ["--track", "--count-line", "1,2,3"],
            "--count-line: expected four numbers x1,y1,x2,y2 (pixels), got '1,2,3'",
        ),
        (["--count-line", "0,0,9,9"], "--count-line counts tracks: add --track"),
        (["--tracker", "deepsort"], "--tracker: unknown tracker 'deepsort'"),
    ]:
        result = cli([*base, *extra])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    image = make_image(tmp_path / "a.png")
    result = cli(["detect", image, "--weights", detect_weights, "--out", out, "--track"])
    assert result.exit_code == 1 and "no source is a video or stream" in result.output
    monkeypatch.setitem(sys.modules, "trackers", None)  # the extra is not installed
    with pytest.raises(
        FpnError, match=r'^tracking needs the trackers package: pip install "fpncli\[track\]"$'
    ):
        run_detect([str(clip)], _options(out, detect_weights))
    assert not out.exists()  # nothing written


def test_exported_models_floor_is_their_own_threshold(tmp_path, monkeypatch):
    from fpncli.config import preset_config
    from fpncli.inference.tracking.session import plan_tracking

    monkeypatch.setattr(
        "fpncli.modeling.exported.exported_config",
        lambda path: preset_config("tiny").replace(box_score_thresh=0.3),
    )
    assert plan_tracking("bytetrack", 0.5, None, exported="m.onnx").detector_thr == 0.3
    assert plan_tracking("bytetrack", 0.5, "0,1,2,3").detector_thr == 0.1
    assert plan_tracking("sort", 0.5, None, exported="m.onnx").detector_thr == 0.5
