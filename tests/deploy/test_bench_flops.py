"""scripts/bench_detect.py's arithmetic count: the GFLOP/s it prints rest on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_detect.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_detect", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_and_weights(tmp_path_factory):
    bench = _bench()
    weights = tmp_path_factory.mktemp("w") / "r50.pt"
    bench.make_weights(weights, seed=0)
    return bench, weights


def _image(path: Path, w: int, h: int) -> Path:
    Image.new("RGB", (w, h), (120, 90, 60)).save(path)
    return path


def test_counts_each_size_once_and_sums_per_image(bench_and_weights, tmp_path):
    bench, weights = bench_and_weights
    small = _image(tmp_path / "a.png", 64, 48)
    same = _image(tmp_path / "b.png", 64, 48)
    wide = _image(tmp_path / "c.png", 96, 48)
    one = bench.count_flops(weights, [small], 64, 107)
    assert one > 1e9  # an R50-FPN at 64 px is still billions of operations
    assert bench.count_flops(weights, [small, same], 64, 107) == pytest.approx(2 * one)
    assert bench.count_flops(weights, [wide], 64, 107) > one  # a larger input costs more


def test_no_images_cost_nothing(bench_and_weights):
    bench, weights = bench_and_weights
    assert bench.count_flops(weights, [], 64, 107) == 0.0


def test_an_unreadable_image_names_itself(bench_and_weights, tmp_path):
    bench, weights = bench_and_weights
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(Exception, match=r"broken\.jpg"):
        bench.count_flops(weights, [broken], 64, 107)


def test_peak_rates_measure_each_kernel_with_one_process_per_core(monkeypatch):
    # Imported by name, as the script's spawned workers import it (they unpickle
    # ``bench_detect._kernel_worker``); spawn passes this sys.path on to them.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import bench_detect

    small = {"matmul": 256, "conv3x3": 16}
    one = bench_detect.peak_rates(1, repeats=2, sizes=small)
    two = bench_detect.peak_rates(2, repeats=2, sizes=small)
    for rates in (one, two):
        assert set(rates) == set(bench_detect.PEAK_KERNELS)
        for rate in rates.values():
            assert 1e8 < rate < 1e14  # FLOP/s: a real rate, not a count or a duration


def test_peak_rates_refuse_no_cores():
    with pytest.raises(ValueError):
        _bench().peak_rates(0)
