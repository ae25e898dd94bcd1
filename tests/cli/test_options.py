"""Options declared once: every model-building command takes every architecture option from
one declaration, and an option that would do nothing is refused in one line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import typer
from typer.testing import CliRunner

from fpncli.cli.app import app
from fpncli.config import architecture_options
from fpncli.modeling.necks.registry import neck_options


def _flags(command: str) -> set[str]:
    root = typer.main.get_command(app)
    cmd = root.commands[command]  # type: ignore[attr-defined]
    return {opt for p in cmd.params for opt in p.opts}


def _error(cli, args: list[str]) -> str:
    result = cli(args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    return line


def test_every_model_building_command_takes_every_architecture_option():
    everything = {o.cli_flag for o in architecture_options()}
    assert {
        "--neck",
        "--bifpn-repeats",
        "--nasfpn-stacks",
        "--nasfpn-norm",
        "--rfp-steps",
        "--no-rfa",
    } <= everything
    for command in ("train", "info", "inspect-levels"):
        assert everything <= _flags(command), command
    # The ablation's rows name the neck and its modifiers: it takes each neck's own options.
    assert {o.cli_flag for o in neck_options()} <= _flags("ablation")


def test_a_neck_added_to_the_registry_gets_its_flag_everywhere(monkeypatch):
    from fpncli.cli.params import model_options
    from fpncli.modeling.necks import registry
    from fpncli.modeling.options import ModelOption

    fpn = registry.NECK_REGISTRY["fpn"]
    extra = ModelOption("roi_sampling_ratio", "A new neck's own option.", flag="--toy-width")
    toy = dataclasses.replace(fpn, name="toy", options=(extra,))
    monkeypatch.setitem(registry.NECK_REGISTRY, "toy", toy)

    seen = {}

    def command(model=None) -> None:
        seen.update(model.given)

    toy_app = typer.Typer()
    toy_app.command()(model_options(command))
    result = CliRunner().invoke(toy_app, ["--toy-width", "8"])
    assert result.exit_code == 0, result.output
    assert seen == {"roi_sampling_ratio": 8}


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "--rfp-steps", "3"], "--rfp-steps: only for --neck rfp (the fpn neck does not read it)"),
        (
            ["info", "--neck", "c4", "--no-rfa", "--no-consistent-supervision"],
            "--no-rfa and --no-consistent-supervision: only for --neck augfpn (the c4 neck does not read them)",
        ),
        (["info", "--bifpn-repeats", "2"], "--bifpn-repeats: only for --neck bifpn"),  # even the default
        (["info", "--neck", "nasfpn", "--nasfpn-stacks", "0"], "nasfpn_stacks must be at least 1, got 0"),
        (["info", "--sac-stages", "3"], "--sac-stages chooses where SAC goes: add --sac (or --sac-deform)"),
        (
            ["info", "--weights", "model.pt", "--neck", "c4", "--sac"],
            "--neck, --sac: architecture options build a new model (--weights none); --weights model.pt",
        ),
        (["ablation", "--necks", "fpn,c4", "--rfp-steps", "3"], "--rfp-steps: no row has the rfp neck"),
        (["ablation", "--necks", "nasfpn", "--nasfpn-norm", "ln"], "--nasfpn-norm: unknown nasfpn_norm 'ln'"),
    ],
)
def test_options_that_would_do_nothing_or_are_wrong_are_one_line(args, message, cli):
    assert message in _error(cli, args)


def test_inspect_levels_and_train_refuse_before_any_work(tmp_path, coco_tiny, cli):
    ann = coco_tiny / "annotations" / "instances_val2017.json"
    line = _error(
        cli, ["inspect-levels", "--coco", str(ann), "--nasfpn-stacks", "2", "--out", str(tmp_path / "i")]
    )
    assert "--nasfpn-stacks: only for --neck nasfpn" in line and not (tmp_path / "i").exists()
    args = [
        "train",
        "--data",
        str(coco_tiny),
        "--preset",
        "tiny",
        "--iters",
        "1",
        "--out",
        str(tmp_path / "t"),
    ]
    assert "--rfp-steps: only for --neck rfp" in _error(cli, [*args, "--rfp-steps", "3"])
    assert not (tmp_path / "t").exists()


def test_resume_refuses_what_would_change_the_run_and_says_what_changes(tmp_path, cli):
    """`fpn train --resume RUN --sac --neck rfp --fpn-channels 32` used to train RUN's fpn."""
    line = _error(cli, ["train", "--resume", str(tmp_path), "--sac", "--neck", "rfp", "--fpn-channels", "32"])
    assert line.startswith("error: --neck, --fpn-channels, --sac: --resume ")
    assert "only --iters, --epochs, --workers, --logger may change" in line
    line = _error(cli, ["train", "--resume", str(tmp_path), "--lr", "0.1", "--data", "x"])
    assert line.startswith("error: --data, --lr: --resume")
    # Allowed ones are said, with the run's own values (this folder has a config, no last.pt).
    (tmp_path / "config.json").write_text(json.dumps({"train": {"out": str(tmp_path), "iters": 50}}))
    result = cli(["train", "--resume", str(tmp_path), "--iters", "80", "--logger", "csv,tensorboard"])
    assert (
        f"resuming {tmp_path} with --iters 80 (was 50), --logger csv,tensorboard (was none)" in result.output
    )
    assert "nothing to resume (no last.pt)" in result.output


def test_the_cli_starts_on_a_typer_without_the_flag_display_hook():
    # Typer releases without TyperOption.display_type_rich (the GPU machine's) must still run `fpn`.
    import subprocess
    import sys

    code = (
        "import typer.core as c\n"
        "if hasattr(c.TyperOption, 'display_type_rich'): del c.TyperOption.display_type_rich\n"
        "import sys; sys.argv = ['fpn', 'detect', '--help']\n"
        "from fpncli.cli.app import main; main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--score-thr" in proc.stdout


def _params(command: str) -> dict[str, object]:
    root = typer.main.get_command(app)
    cmd = root.commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in cmd.params}


def test_detect_and_eval_share_one_inference_option_group_and_export_its_model_part():
    from fpncli.cli.inference_params import INFERENCE_OPTIONS, MODEL_OVERRIDE_FIELDS

    detect, evaluate, export = _params("detect"), _params("eval"), _params("export")
    for name, _, default in INFERENCE_OPTIONS:
        for params in (detect, evaluate):
            option = params[name]
            assert option.default == default, name
            assert (option.opts, option.help) == (detect[name].opts, detect[name].help), name
        if name in MODEL_OVERRIDE_FIELDS:
            assert export[name].help == detect[name].help, name
        else:
            assert name not in export, name
    assert detect["workers"].show_default == evaluate["batch_size"].show_default == "auto"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--nms-iou", "0"], "--nms-iou must be in (0, 1], got 0.0"),
        (["--workers", "-1"], "--workers must be 0 or more, got -1"),
    ],
)
def test_eval_checks_the_inference_options_like_detect(tmp_path, args, message, cli):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    out = tmp_path / "o"
    line = _error(
        cli, ["eval", "--coco", ann, "--weights", "w.pt", "--images", tmp_path, "--out", out, *args]
    )
    assert message in line
    assert not out.exists()


def test_inference_overrides_turn_the_group_into_model_settings():
    from fpncli.inference.settings import InferenceArgs, inference_overrides

    args = InferenceArgs(score_thr=0.3, nms_iou=0.6, max_dets=7, min_size=320)
    assert inference_overrides(args) == {
        "min_size": 320,
        "max_size": None,
        "box_score_thresh": 0.3,
        "box_nms_thresh": 0.6,
        "box_detections_per_img": 7,
    }
    assert inference_overrides(args, score_thr=0.1)["box_score_thresh"] == 0.1


def test_every_out_option_has_the_same_short_form():
    root = typer.main.get_command(app)
    with_out = [name for name in root.commands if "--out" in _flags(name)]  # type: ignore[attr-defined]
    assert {"detect", "eval", "export", "train"} <= set(with_out)
    assert [name for name in with_out if "-o" not in _flags(name)] == []


@pytest.mark.parametrize("code", [130, 1, 0])
def test_a_finished_run_ignores_signals_while_python_exits(monkeypatch, code):
    """Once the command has ended (outputs written), a Ctrl-C or SIGTERM in the ~1 s of
    interpreter teardown killed the process by that signal (status -2 / -15) instead of
    ending with the command's own status."""
    import signal

    import fpncli.cli.app as app_module

    def exits() -> None:
        raise SystemExit(code)

    monkeypatch.setattr(app_module, "app", exits)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            app_module.main()
        assert info.value.code == code
        now = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        assert now == (signal.SIG_IGN, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
