"""scripts/gpu_check.sh and its helper fail at once, saying why, on a machine without a GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_gpu(), reason="a CUDA GPU is present: the check would run for real")
def test_the_python_helper_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 3
    assert "no CUDA GPU" in proc.stderr and "This check needs a GPU" in proc.stderr
    assert not (tmp_path / "r").exists(), "nothing ran"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is present")
def test_the_shell_script_refuses_before_setting_anything_up():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 3
    assert "no NVIDIA GPU here" in proc.stderr
    assert "[setup]" not in proc.stdout
