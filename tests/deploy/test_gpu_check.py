"""scripts/gpu_check.py on a machine without CUDA: it says so at once and exits 3."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu_check would run")
def test_without_cuda_it_exits_at_once_saying_so():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "no CUDA device" in proc.stderr and "nothing to check" in proc.stderr
    assert proc.stdout == ""  # no table: nothing was run
    assert time.perf_counter() - t0 < 60  # no data, no model: only the import of torch


def test_help_documents_the_exit_codes():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--cpu-dry-run" in proc.stdout
    assert "3 no CUDA" in SCRIPT.read_text()
