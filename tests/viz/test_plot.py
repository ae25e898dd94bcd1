"""`fpn plot` (#27): one run's curves, several overlaid, and the one-line errors."""

from __future__ import annotations

import json

import pytest

from fpncli.errors import FpnError
from fpncli.viz.curves import metrics_file, read_metrics, run_labels


def _write_run(folder, losses, aps=()):
    """A run folder whose metrics.jsonl has one train record per loss and val records."""
    folder.mkdir(parents=True)
    lines = [
        {
            "type": "train",
            "iter": i + 1,
            "loss": v,
            "loss_classifier": v / 2,
            "loss_box_reg": v / 4,
            "lr": 0.01,
        }
        for i, v in enumerate(losses)
    ]
    lines += [{"type": "val", "iter": it, "AP": ap, "AP50": ap * 1.5} for it, ap in aps]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_one_run_default_out_in_its_folder(tmp_path, cli):
    run = _write_run(tmp_path / "a", [3.0, 2.0, 1.5], aps=[(3, 0.2)])
    result = cli(["plot", run])
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").stat().st_size > 5000
    assert "wrote" in result.output and "(1 run)" in result.output


def test_several_runs_overlaid_with_their_names(tmp_path, cli):
    a = _write_run(tmp_path / "x" / "baseline", [3.0, 2.0], aps=[(2, 0.2)])
    b = _write_run(tmp_path / "y" / "panet", [2.5, 1.0])
    out = tmp_path / "plots" / "compare.png"
    result = cli(["plot", a, b, "--out", out])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 5000 and "(2 runs)" in result.output
    assert run_labels([a, b]) == ["baseline", "panet"]
    c = _write_run(tmp_path / "z" / "baseline", [1.0])
    assert run_labels([a, c]) == [str(a), str(c)]  # same names: the paths tell them apart


def test_a_run_in_progress_with_a_half_written_line(tmp_path):
    run = _write_run(tmp_path / "live", [3.0, 2.0])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "iter": 3, "lo')  # the line being written
    assert metrics_file(run) == run / "metrics.jsonl"
    train, val = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in train] == [1, 2] and val == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "no training metrics in it"),
        ("not json\n[1, 2]\n{}\n", "no training metrics in it"),
    ],
)
def test_absent_empty_or_broken_metrics_is_one_line(tmp_path, cli, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    with pytest.raises(FpnError, match=message):
        metrics_file(run)
    result = cli(["plot", run])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and f"{run / 'metrics.jsonl'}: {message}" in result.output
    assert not (run / "curves.png").exists()


def test_output_may_not_be_an_input(tmp_path, cli):
    run = _write_run(tmp_path / "a", [1.0])
    result = cli(["plot", run, "--out", run / "metrics.jsonl"])
    assert result.exit_code == 1 and "is also an input" in result.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 1.0


def test_values_that_are_not_numbers_are_gaps(tmp_path, cli):
    """A hand-edited or foreign file: strings, NaN and missing keys draw gaps, not a traceback."""
    run = tmp_path / "odd"
    run.mkdir()
    records = [
        '{"type": "train", "iter": 1, "loss": "abc", "lr": "x"}',
        '{"type": "train", "iter": 2, "loss": NaN}',
        '{"type": "train", "iter": 3, "loss": 1.0, "lr": 0.1}',
        '{"type": "val", "iter": 3}',
    ]
    (run / "metrics.jsonl").write_text("\n".join(records) + "\n")
    result = cli(["plot", run, run / "metrics.jsonl", "--out", tmp_path / "both.png"])
    assert result.exit_code == 0, result.output
    assert cli(["plot", run]).exit_code == 0 and (run / "curves.png").stat().st_size > 5000
