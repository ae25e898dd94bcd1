"""`fpn detect` on videos and streams: per-frame JSON, annotated video, stride, faults, Ctrl-C."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from fpncli.data.sources import expand_sources
from fpncli.data.video import is_stream, stream_output_name
from fpncli.errors import FpnError
from fpncli.inference.detect import DetectOptions, run_detect

av = pytest.importorskip("av", reason='video tests need PyAV (pip install "fpncli[video]")')
pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 10


def _video(path: Path, frames: int = 6, size=(64, 48), options: dict | None = None) -> Path:
    """A small H.264 (MPEG-4 Part 2 for .avi) video: a bright square moving over noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream("mpeg4" if path.suffix == ".avi" else "libx264", rate=RATE)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    rng = np.random.default_rng(0)
    for i in range(frames):
        rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        rgb[8:28, 4 + 4 * i : 24 + 4 * i] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def _frames(path: Path) -> tuple[int, float]:
    """(decoded frame count, frame rate) of a video: it is playable to its end."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), float(stream.average_rate)


def _run(sources, out: Path, weights: str, progress=None, **kw):
    options = DetectOptions(weights=weights, out_dir=out, score_thr=kw.pop("score_thr", 0.0), workers=0, **kw)
    return run_detect([str(s) for s in sources], options, progress=progress)


def test_folder_with_video_and_image_end_to_end(tmp_path, detect_weights):
    from PIL import Image

    src = tmp_path / "src"
    _video(src / "clip.mp4", frames=6)
    Image.new("RGB", (40, 30), (90, 120, 200)).save(src / "still.png")
    events: list[dict] = []
    summary = _run([src], tmp_path / "out", detect_weights, progress=events.append)
    data = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["file"] for r in data["images"]] == [str(src / "still.png")]
    (video,) = data["videos"]
    assert video["file"] == str(src / "clip.mp4") and (video["width"], video["height"]) == (64, 48)
    assert video["fps"] == RATE and video["frames_total"] == 6 and data["errors"] == []
    assert [f["frame"] for f in video["frames"]] == list(range(6))
    assert [f["time"] for f in video["frames"]] == pytest.approx([i / RATE for i in range(6)])
    assert all(f["detections"] for f in video["frames"])  # score threshold 0: the random model finds boxes
    assert set(video["frames"][0]["detections"][0]) == {"box", "score", "category_id", "label"}
    annotated = tmp_path / "out" / "clip.mp4"
    assert video["annotated"] == str(annotated) and (tmp_path / "out" / "still.png").is_file()
    assert _frames(annotated) == (6, RATE)  # same container, same frame rate, every frame
    assert summary.frames == 6 and summary.videos_total == 1 and summary.images_read == 1
    frame_events = [e for e in events if e["event"] == "frame"]
    assert len(frame_events) == 6 and frame_events[-1]["frames_total"] == 6
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary left behind


def test_vid_stride_detects_every_nth_frame_and_keeps_every_frame(tmp_path, detect_weights):
    clip = _video(tmp_path / "clip.avi", frames=7)
    _run([clip], tmp_path / "out", detect_weights, vid_stride=3)
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == [0, 3, 6] and video["vid_stride"] == 3
    assert _frames(tmp_path / "out" / "clip.avi") == (7, RATE)  # the frames between show the last boxes


def test_truncated_video_keeps_the_frames_before_the_fault(tmp_path, detect_weights):
    whole = _video(tmp_path / "whole.mp4", frames=12, options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "src" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) * 55 // 100])
    summary = _run([cut], tmp_path / "out", detect_weights)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    kept = len(predictions["videos"][0]["frames"])
    assert 0 < kept < 12
    (error,) = predictions["errors"]
    assert error["file"] == str(cut) and f"the {kept} frames" in error["error"]
    assert "\n" not in error["error"] and summary.videos_failed == 1
    assert _frames(tmp_path / "out" / "cut.mp4")[0] == kept


def test_ctrl_c_keeps_a_playable_video_and_valid_json(tmp_path, detect_weights):
    clip = _video(tmp_path / "clip.mp4", frames=10)

    def stop_at_frame_3(event: dict) -> None:
        if event["event"] == "frame" and event["frame"] == 3:
            raise KeyboardInterrupt

    summary = _run([clip], tmp_path / "out", detect_weights, progress=stop_at_frame_3)
    assert summary.interrupted
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == [0, 1, 2, 3]
    assert _frames(tmp_path / "out" / "clip.mp4") == (4, RATE)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_ctrl_c_between_a_frames_record_and_its_video_frame_keeps_them_equal(
    tmp_path, detect_weights, monkeypatch
):
    """A real SIGINT while frame 2 is being drawn (after its record was made, before the video
    got it): the JSON used to count one frame more than the video held."""
    import signal

    import fpncli.viz.draw as draw_module

    clip = _video(tmp_path / "clip.mp4", frames=10)
    draw = draw_module.draw_detections
    calls = []

    def draw_and_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return draw(*args, **kwargs)

    monkeypatch.setattr(draw_module, "draw_detections", draw_and_interrupt)
    summary = _run([clip], tmp_path / "out", detect_weights)
    assert summary.interrupted
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == [0, 1, 2]
    assert _frames(tmp_path / "out" / "clip.mp4") == (3, RATE)


def test_a_second_ctrl_c_while_the_outputs_are_finished_loses_nothing(tmp_path, detect_weights, monkeypatch):
    """Ctrl-C at frame 3, then a second one while the encoder flushes and another while
    predictions.json is written: the video used to be lost (a hidden .tmp left) and the JSON
    missing or older than the video."""
    import signal

    import fpncli.data.video as video_module
    import fpncli.inference.detect as detect_module

    clip = _video(tmp_path / "clip.mp4", frames=10)
    close, write_json = video_module.VideoWriter.close, detect_module.write_json

    def interrupted_close(self):
        os.kill(os.getpid(), signal.SIGINT)
        return close(self)

    def interrupted_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return write_json(*args, **kwargs)

    def stop_at_frame_3(event: dict) -> None:
        if event["event"] == "frame" and event["frame"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(video_module.VideoWriter, "close", interrupted_close)
    monkeypatch.setattr(detect_module, "write_json", interrupted_write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C, once the outputs are written
        _run([clip], out, detect_weights, progress=stop_at_frame_3)
    (video,) = json.loads((out / "predictions.json").read_text())["videos"]
    assert [f["frame"] for f in video["frames"]] == [0, 1, 2, 3]
    assert video["annotated"] == str(out / "clip.mp4") and _frames(out / "clip.mp4") == (4, RATE)
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_while_the_annotated_video_opens_leaves_no_temporary(tmp_path, monkeypatch):
    import fpncli.data.video as video_module

    def interrupted_open(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(av, "open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        video_module.VideoWriter(tmp_path / "a.mp4", 64, 48, __import__("fractions").Fraction(RATE))
    assert list(tmp_path.iterdir()) == []


def test_unreachable_stream_and_broken_video_are_one_line_each(tmp_path, detect_weights, cli):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    clip = _video(tmp_path / "ok.mp4", frames=2)
    result = cli(
        [
            "detect",
            str(broken),
            "rtsp://127.0.0.1:9/live",
            str(clip),
            "--weights",
            detect_weights,
            "--out",
            str(tmp_path / "out"),
            "--score-thr",
            "0",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = json.loads((tmp_path / "out" / "predictions.json").read_text())["errors"]
    assert [e["file"] for e in errors] == [str(broken), "rtsp://127.0.0.1:9/live"]
    assert "cannot open video" in errors[0]["error"] and "cannot open stream" in errors[1]["error"]
    assert all("\n" not in e["error"] for e in errors)
    assert _frames(tmp_path / "out" / "ok.mp4")[0] == 2  # the good video is still done


def test_empty_cases(tmp_path, detect_weights):
    clip = _video(tmp_path / "clip.mp4", frames=3)
    # a video without detections: entries with empty lists, an annotated copy all the same
    _run([clip], tmp_path / "out", detect_weights, score_thr=1.0)
    (video,) = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"]
    assert [f["detections"] for f in video["frames"]] == [[], [], []]
    assert _frames(tmp_path / "out" / "clip.mp4")[0] == 3
    # --no-draw: JSON only
    _run([clip], tmp_path / "nodraw", detect_weights, draw=False)
    assert [p.name for p in (tmp_path / "nodraw").iterdir()] == ["predictions.json"]
    # a folder with neither images nor videos
    (tmp_path / "empty").mkdir()
    with pytest.raises(FpnError, match="has no images or videos"):
        expand_sources([tmp_path / "empty"], videos=True)


def test_options_and_sources(tmp_path, monkeypatch):
    with pytest.raises(FpnError, match="--vid-stride must be at least 1"):
        run_detect(["x.mp4"], DetectOptions(weights="none", out_dir=tmp_path / "o", vid_stride=0))
    assert is_stream("rtsp://cam/live") and is_stream("webcam:0") and is_stream("HTTPS://x/y.m3u8")
    assert not is_stream("webcam:x") and not is_stream("clip.mp4")
    assert stream_output_name("webcam:0") == "webcam0.mp4"
    assert stream_output_name("rtsp://cam.local:554/live?token=1") == "rtsp_cam.local_554_live.mp4"
    clip = _video(tmp_path / "clip.mp4", frames=1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun
    with pytest.raises(FpnError, match="without torchrun"):
        run_detect([str(clip)], DetectOptions(weights="none", out_dir=tmp_path / "o"))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    with pytest.raises(FpnError, match=r'pip install "fpncli\[video\]"'):
        run_detect([str(clip)], DetectOptions(weights="none", out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_video_named_like_an_output_is_kept(tmp_path, detect_weights):
    """`fpn detect a.mp4 a_det.mp4 --out .` used to replace a_det.mp4 with a's copy."""
    a, a_det = _video(tmp_path / "a.mp4", frames=2), _video(tmp_path / "a_det.mp4", frames=3)
    before = [a.read_bytes(), a_det.read_bytes()]
    summary = _run([a, a_det], tmp_path, detect_weights)
    assert [a.read_bytes(), a_det.read_bytes()] == before
    assert [v["annotated"] for v in summary.predictions["videos"]] == [
        str(tmp_path / "a_det2.mp4"),
        str(tmp_path / "a_det_det.mp4"),
    ]
    assert _frames(tmp_path / "a_det2.mp4")[0] == 2 and _frames(tmp_path / "a_det_det.mp4")[0] == 3
    assert len(summary.renamed) == 2


@pytest.mark.slow
def test_sigterm_mid_video_is_ctrl_c_a_playable_video_and_valid_json(tmp_path, detect_weights):
    """Containers and schedulers stop jobs with SIGTERM: it used to leave a hidden 0-byte
    temporary and no video. Now it does what Ctrl-C does, in a real process."""
    import signal
    import subprocess
    import time

    clip = _video(tmp_path / "clip.mp4", frames=600)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fpncli", "detect", str(clip), "--weights", detect_weights, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (out / "predictions.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first flush: frames are being detected
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "interrupted" in output
    (video,) = json.loads((out / "predictions.json").read_text())["videos"]
    detected = len(video["frames"])
    assert 0 < detected < 600 and video["annotated"] == str(out / "clip.mp4")
    assert _frames(out / "clip.mp4")[0] == detected
    assert not list(out.glob(".*.tmp"))
