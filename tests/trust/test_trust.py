"""Trust (issue 10): no input overwritten, no run stopped by one odd file, no result lost,
every mistake one line. One section per class of failure; each test failed before its fix."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from fpncli.atomic import atomic_write, remove_stale_temporaries, write_json
from fpncli.errors import FpnError
from fpncli.outputs import LEDGER_NAME

pytestmark = pytest.mark.usefixtures("one_thread")


def _detect(cli, args: list[str]):
    return cli(["detect", *map(str, args), "--workers", "0"], terminal_width=400)


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------- 1. outputs never replace inputs


def test_detect_coco_results_may_not_replace_the_annotation_file_or_an_image(
    tmp_path, detect_weights, make_image, cli
):
    img = make_image(tmp_path / "a.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 5, "file_name": "a.png"}]}))
    before = ann.read_bytes(), img.read_bytes()
    out = tmp_path / "out"
    result = _detect(
        cli,
        [img, "--weights", detect_weights, "--out", out, "--coco-results", ann, "--coco-annotations", ann],
    )
    _one_error_line(result, str(ann), "also an input")
    result = _detect(cli, [img, "--weights", detect_weights, "--out", out, "--coco-results", img])
    _one_error_line(result, str(img), "also an input")
    assert (ann.read_bytes(), img.read_bytes()) == before
    assert not out.exists()  # refused before anything was written


def test_eval_out_may_not_replace_its_annotation_file(tmp_path, cli):
    ann = tmp_path / "metrics.json"  # the annotation file sits where eval writes metrics.json
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}], "annotations": []}
    ann.write_text(json.dumps({**data, "categories": [{"id": 1, "name": "x"}]}))
    results = tmp_path / "res.json"
    results.write_text("[]")
    before = ann.read_bytes()
    result = cli(
        ["eval", "--coco", str(ann), "--results", str(results), "--out", str(tmp_path)],
        terminal_width=400,
    )
    _one_error_line(result, "also an input")
    assert ann.read_bytes() == before


# ----------------------------------------------------------- 2. one odd image never stops a run


def test_elongated_image_is_a_per_image_error_and_the_rest_is_processed(tmp_path, tiny_model, make_image):
    from fpncli.inference.predict import predict_images

    thin = tmp_path / "thin.png"
    Image.new("RGB", (3000, 1)).save(thin)
    good = make_image(tmp_path / "good.png")
    results = list(predict_images(tiny_model, [thin, good]))
    assert "too elongated" in results[0].error and "3000x1" in results[0].error
    assert results[1].error is None


def test_training_dataset_drops_images_the_model_cannot_take(tmp_path, make_image):
    from fpncli.data.dataset import DetectionDataset

    (tmp_path / "img").mkdir()
    Image.new("RGB", (2000, 1)).save(tmp_path / "img" / "thin.png")
    make_image(tmp_path / "img" / "ok.png")
    ann = tmp_path / "ann.json"
    images = [
        {"id": 1, "file_name": "thin.png", "width": 2000, "height": 1},
        {"id": 2, "file_name": "ok.png", "width": 64, "height": 48},
    ]
    box = {"category_id": 1, "bbox": [1, 0, 10, 1], "iscrowd": 0}
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": [{**box, "id": 1, "image_id": 1}, {**box, "id": 2, "image_id": 2}],
                "categories": [{"id": 1, "name": "x"}],
            }
        )
    )
    ds = DetectionDataset(ann, tmp_path / "img")
    dropped = ds.drop_unfit([128], 160)
    assert len(ds) == 1 and ds.records[0].path.name == "ok.png"
    assert len(dropped) == 1 and "thin.png" in dropped[0] and "too elongated" in dropped[0]
    assert dropped == [line for line in ds.report.skipped_images() if "thin" in line]


# ----------------------------------------------------------- 3. a failed rerun keeps earlier results


@pytest.mark.parametrize(
    "bad", [["--workers", "-1"], ["--classes", ""], ["--classes", ","], ["--batch-size", "0"]]
)
def test_a_rejected_rerun_leaves_the_previous_predictions(tmp_path, detect_weights, bad, cli, make_image):
    img = make_image(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"images": ["yesterday"], "errors": []}')
    result = cli(
        ["detect", str(img), "--weights", detect_weights, "--out", str(out), *bad], terminal_width=400
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert json.loads((out / "predictions.json").read_text())["images"] == ["yesterday"]


@pytest.mark.parametrize("source", ["image", "video"])
@pytest.mark.parametrize("stop", [RuntimeError("the runtime refused the graph"), KeyboardInterrupt()])
def test_a_run_stopped_before_its_first_image_leaves_the_previous_predictions(
    tmp_path, detect_weights, stop, source, cli, make_image, make_video, monkeypatch
):
    """A path that fails as its first image or frame starts (a runtime refusing to compile
    the graph: OpenVINO under ONEDNN_MAX_CPU_ISA=AVX2 at bf16), or a Ctrl-C then, wrote an
    empty predictions.json over the previous run's."""
    from fpncli.inference import sharded
    from fpncli.modeling.detector import FPNFasterRCNN

    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"images": ["yesterday"], "errors": []}')

    def stops_at_once(*args, **kwargs):
        raise stop
        yield  # a generator, as predict_sharded

    if source == "image":
        # Before the first image's result (a forward-pass error would be that image's own).
        src = make_image(tmp_path / "a.png")
        monkeypatch.setattr(sharded, "predict_sharded", stops_at_once)
    else:
        # The video is open and its record made; the first frame's forward pass stops the run.
        src = make_video(tmp_path / "v.mp4")
        monkeypatch.setattr(FPNFasterRCNN, "detect_prepared", lambda *a, **k: next(stops_at_once()))
    args = ["detect", str(src), "--weights", detect_weights, "--out", str(out), "--backend", "torch"]
    result = cli([*args, "--workers", "0"], terminal_width=400)
    assert json.loads((out / "predictions.json").read_text())["images"] == ["yesterday"]
    if isinstance(stop, KeyboardInterrupt):
        assert result.exit_code == 130
        assert "nothing written" in result.output and "holds the 0" not in result.output
    else:
        assert result.exit_code != 0


# ----------------------------------------------------------- 4. unreadable training images are reported

SMALL = {"min_size": 64, "max_size": 96, "fpn_channels": 16, "box_head_dim": 32}


@pytest.fixture
def shapes(tmp_path):
    from fpncli.data.synth import synthesize

    synthesize(tmp_path / "shapes", train=4, val=0, seed=0)
    return tmp_path / "shapes"


def _train_cfg(shapes, out, **kw):
    from fpncli.training.config import TrainConfig

    return TrainConfig(
        data=str(shapes), preset="tiny", out=str(out), model=dict(SMALL), batch_size=2, workers=0, **kw
    )


def test_training_reports_unreadable_images_in_console_and_run_folder(shapes, tmp_path):
    from fpncli.training.train import train

    bad = sorted((shapes / "train").glob("*.png"))[:2]
    for p in bad:
        p.write_bytes(p.read_bytes()[:100])  # truncated
    events = []
    summary = train(_train_cfg(shapes, tmp_path / "run", iters=2, eval_every=-1), progress=events.append)
    listed = (tmp_path / "run" / "skipped_images.txt").read_text()
    warnings = " ".join(e["message"] for e in events if e["event"] == "warning")
    for p in bad:
        assert p.name in listed and p.name in warnings
    assert summary["skipped_images"] == 2 and summary["last"] is not None


def test_training_with_no_readable_image_fails_and_claims_no_checkpoint(shapes, tmp_path):
    from fpncli.training.train import train

    for p in (shapes / "train").glob("*.png"):
        p.write_bytes(b"")
    with pytest.raises(FpnError, match="no training image could be read"):
        train(_train_cfg(shapes, tmp_path / "run", iters=4, eval_every=-1))
    assert not (tmp_path / "run" / "last.pt").exists()
    assert len((tmp_path / "run" / "skipped_images.txt").read_text().splitlines()) == 4


# ----------------------------------------------------------- 5. output-path problems are one line


def test_out_that_is_a_file_or_a_folder_where_a_file_goes(tmp_path, detect_weights, cli, make_image):
    img = make_image(tmp_path / "a.png")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    res = tmp_path / "res.json"
    res.write_text("[]")
    result = cli(["eval", "--coco", str(ann), "--results", str(res), "--out", str(a_file)])
    _one_error_line(result, "not a folder")
    result = cli(["inspect-levels", str(img), "--preset", "tiny", "--out", str(a_file)])
    _one_error_line(result, "not a folder")
    result = _detect(
        cli, [img, "--weights", detect_weights, "--out", tmp_path / "o", "--coco-results", tmp_path]
    )
    _one_error_line(result, "is a folder")


def test_unwritable_output_folder(tmp_path, detect_weights, monkeypatch, make_image, cli):
    img = make_image(tmp_path / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root may write anywhere: make the permission check see a locked folder
        import fpncli.outputs

        real = os.access
        monkeypatch.setattr(fpncli.outputs.os, "access", lambda p, m: Path(p) != locked and real(p, m))
    try:
        result = _detect(cli, [img, "--weights", detect_weights, "--out", locked / "out"])
        _one_error_line(result, str(locked / "out"), "permission denied")
    finally:
        locked.chmod(0o700)


def test_full_disk_while_drawing_keeps_the_finished_images_recorded(
    tmp_path, detect_weights, monkeypatch, make_image
):
    import fpncli.inference.annotated as detect_mod
    from fpncli.inference.detect import DetectOptions, run_detect

    src = [make_image(tmp_path / "src" / f"{i}.png", seed=i) for i in range(3)]
    calls = []

    def full_on_second(path, write, binary=False, **kw):
        calls.append(path)
        if len(calls) < 2:
            return atomic_write(path, write, binary, **kw)

        def partial(f):
            f.write(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, partial, binary, **kw)

    monkeypatch.setattr(detect_mod, "atomic_write", full_on_second)
    out = tmp_path / "out"
    with pytest.raises(FpnError, match="No space left on device") as info:
        run_detect(
            [str(p) for p in src],
            DetectOptions(weights=detect_weights, out_dir=out, workers=0, score_thr=0.0),
        )
    assert "1.png" in str(info.value)
    recorded = [r["file"] for r in json.loads((out / "predictions.json").read_text())["images"]]
    assert str(src[0]) in recorded and str(src[1]) in recorded
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporaries left
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [LEDGER_NAME]


def test_failed_torch_save_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file"
        )

    with pytest.raises(FpnError, match=r"last\.pt: cannot write"):
        atomic_write(target, fail, binary=True)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["last.pt"]


def test_os_errors_in_any_command_are_one_line(tmp_path, monkeypatch, cli):
    def no_space(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", no_space)
    result = cli(["data", "synth", str(tmp_path / "d"), "--train", "1", "--val", "0"])
    _one_error_line(result, "No space left on device", "000000.png")


# ----------------------------------------------------------- 6. ambiguous input is refused


def test_one_image_id_for_two_files_is_refused(tmp_path):
    from fpncli.data.coco import load_coco

    ann = tmp_path / "ann.json"
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    with pytest.raises(FpnError, match="image id 1 is used for two different files"):
        load_coco(ann)
    ann.write_text(json.dumps({"images": images[:1] * 2, "annotations": [], "categories": []}))
    assert list(load_coco(ann).images) == [1]  # the same entry twice is harmless


@pytest.mark.parametrize("wanted", [[""], [","], [" , "]])
def test_empty_class_filter_is_refused(wanted):
    from fpncli.inference.classes import resolve_classes

    with pytest.raises(FpnError, match="--classes: no class given"):
        resolve_classes(["a", "b"], [1, 2], wanted)


@pytest.mark.parametrize("ratios", ["nan,1", "inf", "1,-inf"])
def test_non_finite_aspect_ratios_are_refused(tmp_path, ratios, cli, make_image):
    img = make_image(tmp_path / "a.png")
    result = cli(["inspect-levels", str(img), "--preset", "tiny", "--aspect-ratios", ratios])
    _one_error_line(result, "--aspect-ratios")


def test_newer_checkpoint_version_is_refused_by_every_loader(tmp_path, tiny_checkpoint, cli):
    from fpncli.modeling.weights import load_detector

    obj = torch.load(tiny_checkpoint, weights_only=True)
    obj["version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(obj, newer)
    with pytest.raises(FpnError, match="version 99 is newer"):
        load_detector(str(newer))  # detect, eval, info, ablation
    result = cli(["inspect-levels", "--coco", str(tmp_path / "x.json"), "--weights", str(newer)])
    _one_error_line(result, "version 99 is newer")
    _one_error_line(cli(["info", "--weights", str(newer)]), "version 99 is newer")


# ----------------------------------------------------------- 7. leftovers and permissions


def test_dead_writers_temporaries_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "last.pt"
    stale = tmp_path / f".last.pt.{dead.pid}-abc123.tmp"
    live = tmp_path / f".last.pt.{os.getppid()}-def456.tmp"
    legacy = tmp_path / ".last.pt.k2j4h5g6.tmp"  # written before temporaries carried a pid
    other = tmp_path / f".best.pt.{dead.pid}-abc123.tmp"
    for p in (stale, live, legacy, other):
        p.write_bytes(b"x" * 100)
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    atomic_write(target, lambda f: f.write(b"new"), binary=True)
    assert not stale.exists() and not legacy.exists()
    assert live.exists() and other.exists()  # a live writer's file, another target's file
    # A run writing many files cleans their folder once: every dead writer's temporary goes.
    mine = tmp_path / ".notes.txt"  # a hidden file that is not a temporary of ours stays
    mine.write_text("x")
    assert remove_stale_temporaries(tmp_path, any_name=True) == [other]
    assert live.exists() and mine.exists()


def test_ctrl_c_as_the_temporary_is_made_leaves_no_temporary(tmp_path, monkeypatch):
    import signal
    import tempfile

    import fpncli.atomic

    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_ctrl_c(**kw):
        made = real_mkstemp(**kw)
        os.kill(os.getpid(), signal.SIGINT)  # lands before the name reaches the caller
        return made

    monkeypatch.setattr(fpncli.atomic.tempfile, "mkstemp", mkstemp_then_ctrl_c)
    target = tmp_path / "predictions.json"
    target.write_text("old")
    open_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            write_json(target, {"new": 1})
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.json"]
    if open_before is not None:  # nor an open descriptor of the deleted temporary
        assert len(os.listdir("/proc/self/fd")) == open_before


def test_written_files_follow_the_umask_or_the_replaced_files_mode(tmp_path, tiny_model):
    from fpncli.checkpoint import save_checkpoint

    old = os.umask(0o002)
    try:
        assert stat.S_IMODE(write_json(tmp_path / "a.json", {}).stat().st_mode) == 0o664
        assert stat.S_IMODE(save_checkpoint(tmp_path / "m.pt", tiny_model).stat().st_mode) == 0o664
        os.umask(0o022)
        assert stat.S_IMODE(write_json(tmp_path / "b.json", {}).stat().st_mode) == 0o644
        (tmp_path / "a.json").chmod(0o640)
        assert stat.S_IMODE(write_json(tmp_path / "a.json", {}).stat().st_mode) == 0o640
    finally:
        os.umask(old)


# ----------------------------------------------------------- 8. console text and own outputs


def test_brackets_in_file_names_print_verbatim(tmp_path, detect_weights, make_image, cli):
    missing = tmp_path / "shot[bad].jpg"
    _one_error_line(
        _detect(cli, [missing, "--weights", detect_weights, "--out", tmp_path / "o"]), "shot[bad].jpg"
    )
    broken = tmp_path / "src" / "shot[bold].png"
    broken.parent.mkdir()
    broken.write_bytes(b"not an image")
    make_image(tmp_path / "src" / "ok.png")
    result = _detect(cli, [tmp_path / "src", "--weights", detect_weights, "--out", tmp_path / "o"])
    assert result.exit_code == 1 and "shot[bold].png: not an image" in result.output


def test_glob_sources_skip_earlier_outputs_under_out(tmp_path, make_image):
    from fpncli.data.sources import expand_sources
    from fpncli.outputs import record_outputs

    a = make_image(tmp_path / "src" / "a.png")
    copy = make_image(tmp_path / "src" / "det" / "a.png")  # an earlier run's annotated copy
    nested = make_image(tmp_path / "src" / "det" / "det" / "a.png")
    user = make_image(tmp_path / "src" / "det" / "b.png")  # the user's photo, not in the ledger
    record_outputs(tmp_path / "src" / "det", [copy, nested])
    pattern = str(tmp_path / "src" / "**" / "*.png")
    assert expand_sources([pattern], recursive=True, exclude=tmp_path / "src" / "det") == [a, user]


def test_out_equal_to_the_input_folder_writes_det_copies_and_reruns(tmp_path, detect_weights, make_image):
    from fpncli.inference.detect import DetectOptions, run_detect

    src = tmp_path / "src"
    a = make_image(src / "a.png")
    for _ in range(2):  # the rerun must not take a_det.png as an input
        summary = run_detect([str(src)], DetectOptions(weights=detect_weights, out_dir=src, workers=0))
        assert summary.images_total == 1 and summary.images_read == 1
    assert (src / "a_det.png").is_file() and a.is_file()
    assert not (src / "a_det_det.png").exists()


# ----------------------------------------------------------- 9. memory: the pixel limit


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels (the limit is checked on the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0")  # no real pixel data: only the header is read
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_default_pixel_limit_names_the_limit_and_how_to_raise_it(tmp_path, monkeypatch, make_image):
    from fpncli.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_image

    assert DEFAULT_MAX_PIXELS <= 100_000_000  # ~2.2 GB peak per image, measured (README "Limits")
    big = _png_header_only(tmp_path / "big.png", 15000, 15000)
    with pytest.raises(ImageReadError, match=r"limit is 100,000,000 pixels.*--max-pixels.*FPN_MAX_PIXELS"):
        read_image(big)
    monkeypatch.setenv("FPN_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match="limit is 100 pixels"):
        read_image(make_image(tmp_path / "small.png", size=(20, 10)))
    monkeypatch.setenv("FPN_MAX_PIXELS", "lots")
    with pytest.raises(FpnError, match="FPN_MAX_PIXELS"):
        read_image(tmp_path / "small.png")


def test_an_image_failing_in_the_forward_pass_is_its_own_error(tmp_path, tiny_model, monkeypatch, make_image):
    import fpncli.inference.predict as predict_mod

    paths = [make_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    real = predict_mod._forward

    def fails_on_image_1(model, items, device, half):
        if any(it.position == 1 for it in items):
            raise RuntimeError("boom")
        return real(model, items, device, half)

    monkeypatch.setattr(predict_mod, "_forward", fails_on_image_1)
    results = list(predict_mod.predict_images(tiny_model, paths, batch_size=3))
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].error == f"{paths[1]}: detection failed (RuntimeError: boom)"


def test_model_config_refuses_non_finite_anchors():
    from fpncli.config import preset_config

    cfg = preset_config("tiny", class_names=["a"], category_ids=[1])
    assert cfg.validate() is cfg
    for bad in ({"aspect_ratios": (float("nan"), 1.0)}, {"anchor_sizes": (16, float("inf"), 64, 128, 256)}):
        with pytest.raises(FpnError, match="positive finite numbers"):
            cfg.replace(**bad).validate()


def test_full_disk_during_a_checkpoint_save_is_one_line_naming_the_file(tmp_path, tiny_model, monkeypatch):
    import fpncli.atomic
    from fpncli.checkpoint import save_checkpoint

    target = tmp_path / "last.pt"
    target.write_bytes(b"previous")
    real_fdopen = os.fdopen

    class Full:
        """A disk with 1000 bytes free."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fpncli.atomic.os, "fdopen", lambda fd, mode, **kw: Full(real_fdopen(fd, mode, **kw)))
    with pytest.raises(FpnError, match=r"last\.pt: cannot write \(No space left on device\)"):
        save_checkpoint(target, tiny_model)
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["last.pt"]


def test_eval_may_rescore_its_own_detections_in_place(tmp_path, cli):
    ann = tmp_path / "ann.json"
    images = [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}]
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    (tmp_path / "ev").mkdir()
    dets = tmp_path / "ev" / "detections.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "score": 0.5}]))
    result = cli(["eval", "--coco", str(ann), "--results", str(dets), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert json.loads(dets.read_text())[0]["score"] == 0.5 and (tmp_path / "ev" / "metrics.json").is_file()


# ----------------------------------------------------------- 10. SIGTERM is Ctrl-C


def test_sigterm_runs_whatever_ctrl_c_runs_and_is_restored_after():
    import signal

    from fpncli.cli.common import sigterm_as_sigint

    calls = []
    previous_int = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        before = signal.getsignal(signal.SIGTERM)
        with sigterm_as_sigint():
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. training's first Ctrl-C: stop and save
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) == before
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt), sigterm_as_sigint():
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, previous_int)
