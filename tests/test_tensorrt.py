"""TensorRT engine build and runtime: GPU only (skipped with the reason elsewhere, see conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

trt = pytest.importorskip("tensorrt", reason="TensorRT/CUDA not available: the tensorrt package is not installed "
                                             "(pip install tensorrt on a machine with an NVIDIA GPU)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("TensorRT/CUDA not available: no CUDA device is visible", allow_module_level=True)

from vla_fakes import export_random_policy  # noqa: E402

from export.metadata import ExportError  # noqa: E402
from export.ort_policy import OrtPolicy  # noqa: E402
from export.tensorrt_build import BuildOptions, build_engine, sidecar_path  # noqa: E402
from export.trt_policy import TrtPolicy, TrtRunner  # noqa: E402
from lapa.policy_protocol import Policy, PolicyInputError  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3, text_dim=32)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_random_policy(tmp_path_factory.mktemp("trt"), "tiny", **SMALL)


def _obs(seed=0):
    image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {"image": image, "instruction": "pick up the red block"}


def test_fp32_engine_matches_onnxruntime(export_dir, tmp_path):
    cache = tmp_path / "timing.cache"
    sidecar = build_engine(export_dir, options=BuildOptions(max_batch=4, timing_cache=cache), log=lambda _m: None)
    assert sidecar["precision"] == "fp32" and sidecar["parity"]["passed"]
    assert sidecar["parity"]["bins_agree"] >= 0.999 and sidecar["parity"]["cosine"] >= 0.999
    assert cache.is_file() and cache.stat().st_size > 0
    policy = TrtPolicy(export_dir)
    reference = OrtPolicy(export_dir, providers=["cpu"])
    assert isinstance(policy, Policy) and policy.metadata["backend"] == "tensorrt"
    for seed in range(3):
        got, want = policy.infer(_obs(seed)), reference.infer(_obs(seed))
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (3, 7)
        np.testing.assert_array_equal(got["bins"], want["bins"])
    with pytest.raises(PolicyInputError):
        policy.infer({"image": np.zeros((16, 16, 3), np.uint8), "instruction": "go"})


def test_dynamic_batch_within_the_profile(export_dir, tmp_path):
    engine = tmp_path / "policy.plan"
    build_engine(export_dir, engine, BuildOptions(min_batch=1, opt_batch=2, max_batch=4), log=lambda _m: None)
    runner = TrtRunner(engine)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 4):
        images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        text = rng.normal(size=(batch, 32)).astype(np.float32)
        assert runner.run(images, text)["actions"].shape == (batch, 3, 7)
    with pytest.raises(ExportError, match="outside the engine's profile"):
        runner.run(np.zeros((5, 32, 32, 3), np.uint8), np.ones((5, 32), np.float32))


def test_fp16_engine_keeps_attention_in_fp32(export_dir, tmp_path):
    engine = tmp_path / "policy_fp16.plan"
    sidecar = build_engine(export_dir, engine, BuildOptions(fp16=True, max_batch=2), log=lambda _m: None)
    assert sidecar["precision"] == "fp16" and sidecar["fp32_pinned_layers"] >= SMALL["depth"]
    assert sidecar["parity"]["cosine"] >= 0.999
    out = TrtPolicy(export_dir, engine=engine).infer(_obs())
    assert np.all(np.isfinite(out["actions"]))


def test_an_engine_from_elsewhere_is_refused(export_dir, tmp_path):
    engine = tmp_path / "policy.plan"
    build_engine(export_dir, engine, BuildOptions(max_batch=1), log=lambda _m: None)
    doc = json.loads(sidecar_path(engine).read_text())
    doc["gpu"]["name"] = "Some Other GPU"
    sidecar_path(engine).write_text(json.dumps(doc))
    with pytest.raises(ExportError, match="specific to the GPU and TensorRT version"):
        TrtRunner(engine)


STATE_SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2, text_dim=32)


@pytest.fixture(scope="module")
def state_export_dir(tmp_path_factory):
    """The `tabletop` recipe (conv + FiLM, proprio state input, l1 head), small."""
    return export_random_policy(tmp_path_factory.mktemp("trt_state"), "tabletop", **STATE_SMALL)


@pytest.mark.parametrize("fp16", [False, True])
def test_a_state_model_engine_matches_onnxruntime(state_export_dir, tmp_path, fp16):
    from lapa.action import fake_state

    engine = tmp_path / "policy.plan"
    sidecar = build_engine(state_export_dir, engine, BuildOptions(fp16=fp16, min_batch=1, opt_batch=2, max_batch=4),
                           log=lambda _m: None)
    assert sidecar["parity"]["passed"] and sidecar["parity"]["head"] == "l1", sidecar["parity"]
    assert sidecar["inputs"] == ["image", "text_emb", "state"]
    policy = TrtPolicy(state_export_dir, engine=engine)
    reference = OrtPolicy(state_export_dir, providers=["cpu"])
    assert policy.metadata["state_dim"] == 8 and policy.metadata["action_output"] == "l1"
    states = fake_state(3, seed=5)
    for seed in range(3):
        obs = {**_obs(seed), "state": states[seed]}
        got, want = policy.infer(obs), reference.infer(obs)
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (2, 7)
        np.testing.assert_allclose(got["actions"], want["actions"], atol=2e-3 if fp16 else 1e-5)
    with pytest.raises(PolicyInputError, match="proprio state"):
        policy.infer(_obs())
    text = np.ones((3, 32), np.float32) / np.sqrt(32)
    images = np.stack([_obs(s)["image"] for s in range(3)])
    out = policy.run(images, text, states, logits=True)
    assert set(out) == {"actions", "bins", "normalized_actions"} and out["actions"].shape == (3, 2, 7)
