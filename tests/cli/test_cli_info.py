"""`fpn --help`, `fpn info` and the error boundary every command shares."""

import json
import subprocess
import sys


def test_help_lists_commands_with_descriptions(cli):
    result = cli(["--help"])
    assert result.exit_code == 0
    assert "info" in result.output and "architecture" in result.output


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "fpncli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.startswith("fpncli ")


def test_info_default_is_the_papers_r50_fpn(cli):
    result = cli(["info", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["backbone"] == "resnet50" and summary["neck"] == "fpn"
    assert [(lv["name"], lv["stride"], lv["channels"], lv["anchor_sizes"]) for lv in summary["levels"]] == [
        ("p2", 4, 256, [32]),
        ("p3", 8, 256, [64]),
        ("p4", 16, 256, [128]),
        ("p5", 32, 256, [256]),
        ("p6", 64, 256, [512]),
    ]
    assert summary["levels"][-1]["used_by"] == ["RPN"]
    assert 41_000_000 < summary["parameters"] < 42_500_000  # torchvision's R50-FPN: 41.8 M at 91 classes


def test_info_table_for_small_configuration(cli):
    result = cli(["info", "--preset", "tiny", "--fpn-channels", "32"], terminal_width=160)
    assert result.exit_code == 0, result.output
    for text in ("resnet18", "p2", "p6", "32", "parameters"):
        assert text in result.output


def test_user_errors_are_one_line_exit_1(tmp_path, cli):
    missing = tmp_path / "missing.pt"
    result = cli(["info", "--weights", str(missing)])
    assert result.exit_code == 1
    assert "no such file" in result.output and "Traceback" not in result.output
    result = cli(["info", "--preset", "huge"])
    assert result.exit_code == 1 and "unknown preset 'huge'" in result.output


def test_usage_errors_exit_2(cli):
    result = cli(["info", "--fpn-channels", "many"])
    assert result.exit_code == 2


def test_debug_flag_shows_the_traceback(tmp_path, cli):
    result = cli(["--debug", "info", "--weights", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and result.exception is not None
