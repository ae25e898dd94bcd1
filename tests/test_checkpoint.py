"""Checkpoints: self-describing, weights_only-safe, atomic, and clear about bad files."""

import pytest
import torch

from fpncli.checkpoint import atomic_torch_save, read_checkpoint, save_checkpoint
from fpncli.errors import FpnError
from fpncli.modeling.torchvision_keys import fpncli_to_torchvision
from fpncli.modeling.weights import load_detector
from fpncli.weight_files import FORMAT


def _outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 140, 120, generator=g), torch.rand(3, 128, 128, generator=g)]
    with torch.no_grad():
        return model.eval()(images)


def test_round_trip_with_weights_only_gives_identical_outputs(tiny_model, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)  # no pickled objects inside
    assert raw["format"] == FORMAT
    assert raw["model_config"]["class_names"] == ["circle", "square", "triangle"]
    assert raw["model_config"]["category_ids"] == [1, 3, 7]
    assert raw["model_config"]["norm"] == "bn"
    loaded = load_detector(str(tiny_checkpoint)).model
    for a, b in zip(_outputs(tiny_model), _outputs(loaded)):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])


def test_training_state_survives(tmp_path, tiny_model):
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9)
    state = {"optimizer": opt.state_dict(), "iteration": 7, "rng": {"torch": torch.get_rng_state()}}
    path = save_checkpoint(tmp_path / "t.pt", tiny_model, train_state=state)
    back = read_checkpoint(path)["train_state"]
    assert back["iteration"] == 7 and torch.equal(back["rng"]["torch"], torch.get_rng_state())


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", tiny_model)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"x": 1}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_torchvision_state_dict_path_loads(tmp_path, tiny_model):
    path = tmp_path / "tv.pth"
    torch.save(fpncli_to_torchvision(tiny_model.state_dict()), path)
    loaded = load_detector(
        str(path),
        min_size=128,
        max_size=160,
        anchor_sizes=(16, 32, 64, 128, 256),
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
    )
    assert loaded.source.startswith("torchvision state dict")
    assert loaded.model.config.backbone == "resnet18" and loaded.model.config.fpn_channels == 64
    for a, b in zip(_outputs(tiny_model), _outputs(loaded.model)):
        assert torch.allclose(a["scores"], b["scores"]) and torch.allclose(a["boxes"], b["boxes"])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"this is not a checkpoint", "not a readable PyTorch weights file"),
    ],
)
def test_corrupt_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(FpnError, match=message) as info:
        load_detector(str(path))
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(FpnError, match=r"cut\.pt: not a readable"):
        read_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Evil()}, path)
    with pytest.raises(FpnError, match="not a safe weights file"):
        read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_foreign_files_are_refused(tmp_path, tiny_model):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(FpnError, match="not an fpncli checkpoint"):
        read_checkpoint(other)
    with pytest.raises(FpnError, match="neither an fpncli checkpoint nor a torchvision"):
        load_detector(str(other))
    backbone_only = tmp_path / "resnet.pth"
    torch.save(tiny_model.backbone.bottom_up.state_dict(), backbone_only)
    with pytest.raises(FpnError, match="--backbone-weights"):
        load_detector(str(backbone_only))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FpnError, match="no such file"):
        load_detector(str(tmp_path / "nope.pt"))
    with pytest.raises(FpnError, match="is a folder"):
        load_detector(str(tmp_path))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"hello world\nsecond line\n", "it is a text file (starts 'hello world')"),
        (bytes(range(1, 200)) * 3, "unrecognised binary data"),
        (b"\x80\x02}q\x00(X\x01", "a Python pickle (pickle.dump's, or a damaged pre-1.6 torch.save file)"),
    ],
)
def test_unreadable_files_say_what_they_are_never_to_unpickle(tmp_path, content, reason, cli):
    """fpn info on a text file used to pass on torch's advice "weights_only=False will likely
    succeed", i.e. unpickle it. The reason is ours, and never suggests unpickling."""
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    result = cli(["info", "--weights", path])
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {path}: not a readable PyTorch weights file: {reason}")
    assert "weights_only" not in result.output


def test_truncated_torch_archive_is_corrupt(tmp_path, tiny_checkpoint):
    path = tmp_path / "cut.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:300])
    with pytest.raises(
        FpnError, match=r"cut\.pt: not a readable PyTorch weights file: truncated or corrupt$"
    ):
        read_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_plain_pickle_is_one_line_whatever_its_protocol(tmp_path, protocol, cli):
    """pickle.dump's files used to leak torch's multi-line warning, and protocol 2 was called
    "truncated or corrupt"."""
    import pickle

    path = tmp_path / "p.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
    result = cli(["info", "--weights", path])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {path}: not a readable PyTorch weights file: a Python pickle (pickle.dump's, or a damaged "
        "pre-1.6 torch.save file), which fpncli never loads (loading one can run code)"
    ]
