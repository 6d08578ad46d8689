"""Shared test settings: headless GL, loopback-only ROS, small thread pools."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _gpu_unavailable() -> str | None:
    """Why tests marked `gpu` cannot run here (TensorRT and a CUDA device), or None."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return ("TensorRT/CUDA not available: the tensorrt package is not installed (pip install tensorrt on a "
                "machine with an NVIDIA GPU)")
    try:
        import torch
    except ImportError:
        return "TensorRT/CUDA not available: torch is not installed"
    if not torch.cuda.is_available():
        return "TensorRT/CUDA not available: no CUDA device is visible"
    return None


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests with the reason where there is no TensorRT + CUDA GPU."""
    import pytest

    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = _gpu_unavailable() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
