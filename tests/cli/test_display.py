"""Output that reads well without a terminal: unwrapped lines, no colour codes, plain
progress lines instead of a live bar."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fpncli.cli.display import PlainProgress, make_console, make_progress


def test_a_log_console_is_wide_and_colourless(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest's stdout is no terminal
    assert not console.is_terminal and console.width == 1000 and console.no_color
    assert isinstance(make_progress(console=console), PlainProgress)
    monkeypatch.setenv("COLUMNS", "123")
    assert make_console().width == 123  # an explicit width wins


def test_plain_progress_prints_periodic_lines_and_the_end(capsys):
    console = make_console()
    quiet = PlainProgress(console, every=3600)
    task = quiet.add_task("detect", total=10, failed=0, unit="img")
    for i in range(9):
        quiet.update(task, advance=1, failed=i // 5)
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 1 and first[0].startswith("detect 1/10 (10%)")  # then quiet for an hour
    assert "img/s" not in first[0]  # microseconds after the start: no meaningless rate
    quiet._tasks[task].started -= 5.0  # as if the ten images had taken five seconds
    quiet.update(task, advance=1)  # done: always a line
    quiet.stop()  # nothing new since: no repeat
    (last,) = capsys.readouterr().out.splitlines()
    assert last.startswith("detect 10/10 (100%) 2.00 img/s") and last.endswith("failed 1")

    chatty = PlainProgress(console, every=0)
    unknown = chatty.add_task("drawing")  # no total: counts only
    chatty.advance(unknown)
    chatty.update(unknown, completed=5, status="loss 0.5")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "drawing 1" and lines[1].startswith("drawing 5 ") and lines[1].endswith("loss 0.5")
    chatty.stop()
    assert capsys.readouterr().out == ""
    idle = PlainProgress(console, every=0)
    idle.add_task("detect", total=5)  # an error stopped the run before its first image
    idle.stop()
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_detect_piped_to_a_file_is_plain_and_unwrapped(tmp_path, make_image, detect_weights):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "shot.png"
    make_image(deep)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = tmp_path / ("out-" * 20)
    done = subprocess.run(
        [sys.executable, "-m", "fpncli", "detect", str(deep), "--weights", detect_weights, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    assert "\x1b[" not in text  # no colour or cursor codes
    assert f"predictions: {out / 'predictions.json'}\n" in done.stdout  # one line, however long
    assert "detect 1/1 (100%)" in done.stderr
