"""Outputs never replace inputs: annotated copies are named so that no input of the run and
no file fpncli did not write is replaced, and a rerun skips exactly its own earlier outputs."""

from __future__ import annotations

import json

import pytest

from fpncli.data.sources import expand_sources
from fpncli.outputs import LEDGER_NAME, read_ledger, record_outputs, safe_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def _detect(cli, *args):
    return cli(["detect", *map(str, args), "--workers", "0"], terminal_width=400)


def _bytes(*paths):
    return [p.read_bytes() for p in paths]


# ------------------------------------------------------------------ naming (no model)


def test_safe_targets_skip_inputs_foreign_files_and_each_other(tmp_path, make_image):
    x, x_det = make_image(tmp_path / "x.jpg"), make_image(tmp_path / "x_det.jpg", seed=1)
    foreign = make_image(tmp_path / "out" / "y.jpg")
    mine = make_image(tmp_path / "out" / "z.jpg")
    wanted = [x, x_det, foreign, mine, tmp_path / "out" / "new.jpg"]
    targets, renamed = safe_targets(wanted, inputs=[x, x_det], owned=[mine])
    assert targets == [
        tmp_path / "x_det2.jpg",  # x_det.jpg is an input too
        tmp_path / "x_det_det.jpg",
        tmp_path / "out" / "y_det.jpg",  # the user's file is kept
        mine,  # ours: replaced
        tmp_path / "out" / "new.jpg",
    ]
    assert [a for a, _ in renamed] == [x, x_det, foreign]
    # Deterministic: the same question gives the same names (a rerun replaces its own copies).
    assert safe_targets(wanted, inputs=[x, x_det], owned=[mine]) == (targets, renamed)
    assert safe_targets([], inputs=[x]) == ([], [])


def test_ledger_round_trip_prunes_gone_files_and_survives_a_broken_ledger(tmp_path, make_image):
    a, b = make_image(tmp_path / "a.png"), tmp_path / "sub" / "b.png"
    record_outputs(tmp_path, [a, b])
    assert read_ledger(tmp_path) == {a.resolve(), b.resolve()}
    record_outputs(tmp_path, [])  # b was never written: dropped
    assert read_ledger(tmp_path) == {a.resolve()}
    (tmp_path / LEDGER_NAME).write_text("{not json")
    assert read_ledger(tmp_path) == set()  # nothing counts as ours: nothing is replaced
    (tmp_path / LEDGER_NAME).write_text(json.dumps({"files": ["/etc/passwd", "../x.png", 3]}))  # names only
    assert read_ledger(tmp_path) == {(tmp_path.parent / "x.png").resolve()}
    assert read_ledger(tmp_path / "missing") == set()


# ------------------------------------------------------------------ fpn detect end to end


def test_input_named_like_an_output_is_kept(tmp_path, make_image, detect_weights, cli):
    """`fpn detect s/x.jpg s/x_det.jpg --out s` used to replace x_det.jpg with x's copy."""
    s = tmp_path / "s"
    x, x_det = make_image(s / "x.jpg"), make_image(s / "x_det.jpg", seed=1)
    before = _bytes(x, x_det)
    for _ in range(2):  # a rerun must neither read its copies nor pile up new names
        result = _detect(cli, x, x_det, "--weights", detect_weights, "--out", s)
        assert result.exit_code == 0, result.output
        assert _bytes(x, x_det) == before
        assert "note: 2 annotated copies renamed" in result.output
    assert sorted(p.name for p in s.iterdir()) == sorted(
        [LEDGER_NAME, "predictions.json", "x.jpg", "x_det.jpg", "x_det2.jpg", "x_det_det.jpg"]
    )
    records = json.loads((s / "predictions.json").read_text())["images"]
    assert [r["annotated"] for r in records] == [str(s / "x_det2.jpg"), str(s / "x_det_det.jpg")]
    # The folder, rerun: the user's two photos are inputs, the two copies are not.
    result = _detect(cli, s, "--weights", detect_weights, "--out", s)
    assert result.exit_code == 0, result.output
    assert [r["file"] for r in json.loads((s / "predictions.json").read_text())["images"]] == [
        str(x),
        str(x_det),
    ]
    assert _bytes(x, x_det) == before


def test_a_file_fpncli_did_not_write_in_out_is_kept(tmp_path, make_image, detect_weights, cli):
    src = make_image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    theirs = make_image(out / "a.png", seed=3)  # someone's file, same name as the copy
    before = theirs.read_bytes()
    result = _detect(cli, src, "--weights", detect_weights, "--out", out)
    assert result.exit_code == 0, result.output
    assert theirs.read_bytes() == before and (out / "a_det.png").is_file()
    assert "a.png -> " in result.output and "a_det.png" in result.output


def test_out_inside_a_recursive_source_keeps_its_photos_as_inputs(tmp_path, make_image, detect_weights, cli):
    """`fpn detect SRC --recursive --out SRC/sub` used to drop SRC/sub's photos and then
    overwrite SRC/sub/a.png with SRC/a.png's copy."""
    src = tmp_path / "src"
    top, inner = make_image(src / "a.png"), make_image(src / "sub" / "a.png", seed=2)
    before = _bytes(top, inner)
    for _ in range(2):
        result = _detect(cli, src, "--recursive", "--weights", detect_weights, "--out", src / "sub")
        assert result.exit_code == 0, result.output
        files = [r["file"] for r in json.loads((src / "sub" / "predictions.json").read_text())["images"]]
        assert files == [str(top), str(inner)]  # both are inputs, every time
        assert _bytes(top, inner) == before
    assert expand_sources([src], recursive=True, exclude=src / "sub") == [top, inner]


def test_detect_with_no_draw_writes_no_ledger(tmp_path, make_image, detect_weights, cli):
    src = make_image(tmp_path / "a.png")
    result = _detect(cli, src, "--weights", detect_weights, "--out", tmp_path, "--no-draw")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / LEDGER_NAME).exists() and src.is_file()


def test_a_file_put_where_a_copy_was_is_the_users(tmp_path, make_image, detect_weights, cli):
    """The ledger records each copy's size and time once written: a photo a user later puts
    at that name is theirs, and the next run writes beside it."""
    src = make_image(tmp_path / "in" / "x.jpg")
    out = tmp_path / "o"
    assert _detect(cli, src, "--weights", detect_weights, "--out", out).exit_code == 0
    theirs = make_image(out / "x.jpg", seed=9)  # replaces our copy with their own photo
    before = theirs.read_bytes()
    result = _detect(cli, src, "--weights", detect_weights, "--out", out)
    assert result.exit_code == 0, result.output
    assert theirs.read_bytes() == before and (out / "x_det.jpg").is_file()
    # Our own copy, untouched since, is replaced on a rerun (no x_det2.jpg).
    assert _detect(cli, src, "--weights", detect_weights, "--out", out).exit_code == 0
    assert not (out / "x_det2.jpg").exists()
