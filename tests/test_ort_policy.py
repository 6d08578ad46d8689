"""OrtPolicy: the Policy protocol on ONNX Runtime, equal to the torch backend, no torch, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vla_fakes import export_random_policy

from export.metadata import METADATA_FILE, POLICY_ONNX, ExportError, file_sha256
from export.ort_policy import OrtPolicy
from lapa.action import fake_state
from lapa.policy.text_encoder import TextEncoder
from lapa.policy.torch_policy import TorchPolicy
from lapa.policy_protocol import Policy, PolicyInputError
from policy_server.backends import load_backend

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("torch_one_thread")]

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3, text_dim=32, control_hz=5.0)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    export_random_policy(root, "tiny", seed=3, parity_samples=16, **SMALL)
    return root


def _obs(seed=0, instruction="pick up the red block", size=32):
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"image": image, "instruction": instruction}


def _copy(export_dir, tmp_path) -> Path:
    return Path(shutil.copytree(export_dir / "export", tmp_path / "copy"))


def test_infer_follows_the_protocol_and_equals_the_torch_backend(export_dir):
    policy = OrtPolicy(export_dir / "export", threads=1)
    assert isinstance(policy, Policy)
    reference = TorchPolicy(export_dir / "ckpt", text_encoder=TextEncoder.load(export_dir / "text_encoder"))
    for seed, instruction in ((0, "pick up the red block"), (1, "push the blue block left"), (2, "go")):
        got, want = policy.infer(_obs(seed, instruction)), reference.infer(_obs(seed, instruction))
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (3, 7)
        assert got["bins"].dtype == np.int64 and isinstance(got["model_ms"], float)
        np.testing.assert_array_equal(got["bins"], want["bins"])
        np.testing.assert_allclose(got["actions"], want["actions"], atol=1e-6)
    meta = policy.metadata
    assert meta["backend"] == "onnxruntime" and meta["image_size"] == [32, 32] and meta["chunk_size"] == 3
    assert meta["model_hash"] == reference.metadata["model_hash"]
    assert meta["providers"] == ["CPUExecutionProvider"] and meta["num_threads"] == 1
    policy.reset()


def test_instruction_embeddings_are_cached_and_match_torch(export_dir):
    policy = OrtPolicy(export_dir / "export", threads=1, cache_size=2)
    encoder = TextEncoder.load(export_dir / "text_encoder")
    texts = ["pick up the red block", "push the blue block to the left of the green block"]
    np.testing.assert_allclose(policy.instructions.encode(texts), encoder.encode(texts).numpy(), atol=1e-5)
    for _ in range(3):
        policy.infer(_obs(0, texts[0]))
    assert (policy.instructions.misses, policy.instructions.hits) == (1, 2)
    policy.infer(_obs(0, texts[1]))
    policy.infer(_obs(0, "a third instruction"))  # LRU of 2: the first one is evicted
    assert texts[0] not in policy.instructions and len(policy.instructions) == 2


def test_the_server_loads_it_by_name(export_dir):
    policy = load_backend("onnxruntime", export_dir / "export", threads=1)
    assert isinstance(policy, OrtPolicy) and policy.infer(_obs())["actions"].shape == (3, 7)


def test_needs_no_torch(export_dir):
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from export.ort_policy import OrtPolicy\n"
        f"p = OrtPolicy({str(export_dir / 'export')!r}, threads=1)\n"
        "img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)\n"
        "out = p.infer({'image': img, 'instruction': 'pick up the red block'})\n"
        "assert out['actions'].shape == (3, 7)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bad_observations_are_input_errors(export_dir):
    policy = OrtPolicy(export_dir / "export", threads=1)
    with pytest.raises(PolicyInputError, match=r"uint8 \(32, 32, 3\)"):
        policy.infer(_obs(size=64))
    with pytest.raises(PolicyInputError):
        policy.infer({"image": _obs()["image"].astype(np.float32), "instruction": "go"})
    with pytest.raises(PolicyInputError, match="instruction"):
        policy.infer({"image": _obs()["image"]})
    read_only = _obs()
    read_only["image"].setflags(write=False)
    assert policy.infer(read_only)["actions"].shape == (3, 7)


def test_a_corrupt_graph_is_refused_with_the_file_named(export_dir, tmp_path):
    copy = _copy(export_dir, tmp_path)
    data = (copy / POLICY_ONNX).read_bytes()
    (copy / POLICY_ONNX).write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportError, match="policy.onnx does not match metadata.json"):
        OrtPolicy(copy)
    # with the hash "fixed", ONNX Runtime itself gets the truncated file: still a clear error
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["files"][POLICY_ONNX] = file_sha256(copy / POLICY_ONNX)
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="ONNX Runtime cannot load it"):
        OrtPolicy(copy)


def test_metadata_that_does_not_describe_the_graph_is_refused(export_dir, tmp_path):
    copy = _copy(export_dir, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["image_size"] = [96, 96]  # the graph takes 32x32
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match=r"'image' has shape \(batch, 32, 32, 3\), "
                                          r"metadata.json says \(N, 96, 96, 3\)"):
        OrtPolicy(copy)
    meta["image_size"], meta["chunk_size"] = [32, 32], 5
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="'actions'"):
        OrtPolicy(copy)


def test_missing_or_foreign_directories(export_dir, tmp_path):
    with pytest.raises(ExportError, match="not found"):
        OrtPolicy(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="metadata.json: not found"):
        OrtPolicy(export_dir / "ckpt")  # a checkpoint, not an export directory
    copy = _copy(export_dir, tmp_path)
    (copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="cannot read"):
        OrtPolicy(copy)


def test_unavailable_providers_say_what_to_install(export_dir):
    with pytest.raises(ExportError, match="onnxruntime-gpu"):
        OrtPolicy(export_dir / "export", providers=["cuda"])
    with pytest.raises(ValueError, match="threads"):
        OrtPolicy(export_dir / "export", threads=0)


# ------------------------------------------------------------------ a model with a proprio input and the l1 head

STATE_SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2, text_dim=32)


@pytest.fixture(scope="module")
def state_export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort_state")
    export_random_policy(root, "tabletop", seed=3, parity_samples=16, **STATE_SMALL)
    return root


def test_a_state_model_equals_the_torch_backend_given_the_same_state(state_export_dir):
    policy = OrtPolicy(state_export_dir / "export", threads=1)
    reference = TorchPolicy(state_export_dir / "ckpt",
                            text_encoder=TextEncoder.load(state_export_dir / "text_encoder"))
    assert policy.metadata["state_dim"] == reference.metadata["state_dim"] == 8
    assert policy.metadata["action_output"] == reference.metadata["action_output"] == "l1"
    states = fake_state(3, seed=7)
    for seed, instruction in ((0, "pick up the red block"), (1, "push the blue block left"), (2, "go")):
        obs = {**_obs(seed, instruction), "state": states[seed]}
        got, want = policy.infer(obs), reference.infer(obs)
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (2, 7)
        assert got["bins"].dtype == np.int64 and got["bins"].shape == (2, 7)
        np.testing.assert_allclose(got["actions"], want["actions"], atol=1e-5)
        assert (got["bins"] == want["bins"]).mean() >= 13 / 14  # a bin flips only at a bin boundary
    batch = policy.run(np.stack([_obs(s)["image"] for s in range(3)]),
                       np.stack([policy.instructions.get("go")] * 3), states, logits=True)
    assert set(batch) == {"actions", "bins", "normalized_actions"} and batch["actions"].shape == (3, 2, 7)
    policy.warmup(1)  # a fake state of its own
    policy.reset()


def test_a_state_model_refuses_an_observation_without_state(state_export_dir):
    policy = OrtPolicy(state_export_dir / "export", threads=1)
    with pytest.raises(PolicyInputError, match=r"this model takes the proprio state: send 'state', 8 floats"):
        policy.infer(_obs())
    with pytest.raises(PolicyInputError, match="proprio state"):
        policy.run(_obs()["image"][None], policy.instructions.get("go")[None])
    with pytest.raises(ValueError, match=r"state must be float32 \(1, 8\)"):
        policy.run(_obs()["image"][None], policy.instructions.get("go")[None], np.zeros((2, 8), np.float32))


def test_a_model_without_state_input_ignores_a_state(export_dir):
    policy = OrtPolicy(export_dir / "export", threads=1)
    assert policy.metadata["state_dim"] == 0 and policy.metadata["action_output"] == "bins"
    with_state = policy.infer({**_obs(), "state": fake_state(1)[0]})
    np.testing.assert_array_equal(with_state["actions"], policy.infer(_obs())["actions"])
    with pytest.raises(ValueError, match="no state input"):
        policy.run(_obs()["image"][None], policy.instructions.get("go")[None], fake_state(1))


def test_a_fixed_batch_of_one_answers_as_the_any_batch_graph_and_refuses_others(export_dir):
    any_batch = OrtPolicy(export_dir / "export", threads=1)
    served = OrtPolicy(export_dir / "export", threads=1, batch=1)
    assert served.metadata["batch"] == 1 and any_batch.metadata["batch"] is None
    for seed in range(3):
        obs = _obs(seed, "push the blue block left")
        np.testing.assert_array_equal(served.infer(obs)["actions"], any_batch.infer(obs)["actions"])
    images = np.zeros((2, 32, 32, 3), np.uint8)
    text = np.zeros((2, served.meta.text_dim), np.float32)
    assert any_batch.run(images, text)["actions"].shape[0] == 2
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        served.run(images, text)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        OrtPolicy(export_dir / "export", batch=0)


def test_the_server_constructor_fixes_batch_one(export_dir):
    assert OrtPolicy.from_dir(export_dir / "export").metadata["batch"] == 1
