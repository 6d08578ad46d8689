"""Shared test settings: headless GL, loopback-only ROS, small thread pools."""

import os

import pytest

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
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = _gpu_unavailable() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


def _scheduling() -> tuple[int, int] | None:
    """(policy, priority) of the calling thread, or None where the OS has no such API."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


@pytest.fixture(autouse=True)
def _keeps_the_scheduling_policy():
    """A test must not leave the test process on another scheduling policy: every thread and
    server process started after it would inherit, say, SCHED_FIFO 99 and starve the machine."""
    before = _scheduling()
    yield
    after = _scheduling()
    if after != before:
        os.sched_setscheduler(0, before[0], os.sched_param(before[1]))  # keep the rest of the run sane
        pytest.fail(f"the test changed the test process's scheduling (policy, priority) from {before} to {after}")


@pytest.fixture
def torch_one_thread():
    """torch on one intra-op thread for the test (tiny models and short inputs: threads only add contention);
    modules use it with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def robot(tmp_path_factory):
    """3 expert episodes of the default suite with actions, 32x32 frames (LeRobot v3); modules that
    need other episodes define their own `robot`."""
    from lapa.sim.record import record_dataset

    root = tmp_path_factory.mktemp("data") / "robot"
    record_dataset("default", 3, root, seed=7, image_size=32, progress=False)
    return root
