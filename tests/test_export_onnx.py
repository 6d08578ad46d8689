"""ONNX export: graph I/O and metadata, parity on random inputs, fp32 softmax, refusals, dynamo path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from bench.random_models import random_checkpoint, random_text_encoder
from export.graph_check import check_graph, softmax_report
from export.metadata import (
    METADATA_FILE,
    POLICY_ONNX,
    TEXT_ONNX,
    TOKENIZER_FILE,
    ExportError,
    check_io,
    file_sha256,
    read_metadata,
)
from export.onnx_export import export_onnx
from export.parity import ParityError, compare_policy, random_token_batch, run_session
from lapa.action import fake_state
from lapa.checkpoint import CheckpointError
from lapa.policy.checkpoint_io import load_vla, save_vla
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA
from lapa.policy.text_encoder import TextEncoder

pytestmark = pytest.mark.timeout(300)

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=3, text_dim=32, control_hz=5.0)
# the `tabletop` recipe (conv + FiLM encoder, proprio state, l1 head), small
STATE_SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, num_bins=16, chunk_size=2, text_dim=32)


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = random_checkpoint(root / "ckpt", preset="tiny", **SMALL)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    doc = export_onnx(ckpt, root / "out", text_encoder_dir=text, exporter="legacy", log=lambda _m: None)
    return ckpt, text, root / "out", doc


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_export_directory_and_metadata(exported):
    ckpt, _text, out, doc = exported
    assert {p.name for p in out.iterdir()} == {POLICY_ONNX, TEXT_ONNX, TOKENIZER_FILE, METADATA_FILE}
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta == json.loads(json.dumps(doc))
    assert meta["image_size"] == [32, 32] and meta["chunk_size"] == 3 and meta["control_hz"] == 5.0
    assert meta["decoder"] == "parallel" and meta["opset"] == 19 and meta["exporter"] == "legacy"
    assert set(meta["action_statistics"]) >= {"q01", "q99", "mean", "std"}
    assert all(len(v) == 7 for v in meta["action_statistics"].values())
    assert meta["checkpoint"]["sha256"] == file_sha256(ckpt / "model.safetensors")
    assert {"torch", "onnx", "onnxruntime", "polygraphy"} <= set(meta["tools"])
    assert meta["tools"]["torch"] == torch.__version__
    assert meta["files"][POLICY_ONNX] == file_sha256(out / POLICY_ONNX)
    policy_io = meta["graphs"][POLICY_ONNX]
    assert policy_io["inputs"]["image"] == {"dtype": "uint8", "shape": ["batch", 32, 32, 3]}
    assert policy_io["inputs"]["text_emb"] == {"dtype": "float", "shape": ["batch", 32]}
    assert policy_io["outputs"]["actions"]["shape"][1:] == [3, 7]
    assert policy_io["outputs"]["logits"]["shape"][1:] == [3, 7, 256]
    text_io = meta["graphs"][TEXT_ONNX]
    assert text_io["inputs"]["input_ids"]["shape"] == ["batch", "seq"]
    assert meta["parity"]["policy"]["passed"] and meta["parity"]["text_encoder"]["passed"]
    assert meta["parity"]["policy"]["bins_agree"] >= 0.999


def test_policy_graph_matches_torch_on_fresh_random_inputs(exported):
    ckpt, _text, out, _doc = exported
    model, config, tokenizer = load_vla(ckpt)
    session = _session(out / POLICY_ONNX)
    for batch, seed in ((1, 11), (7, 12)):  # dynamic batch
        images, text = config.fake_inputs(batch=batch, seed=seed)
        assert images.float().std() > 0 and text.abs().sum() > 0  # random, never zeros
        got = run_session(session, {"image": images.numpy(), "text_emb": text.numpy()})
        with torch.no_grad():
            logits = model(images, text)
            bins, actions = model.predict_actions(images, text)
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (batch, 3, 7)
        assert (got["bins"] == bins.numpy()).mean() >= 0.999
        assert np.abs(got["logits"] - logits.numpy()).max() <= 1e-4
        np.testing.assert_allclose(got["actions"], actions.numpy(), atol=1e-6)
        # un-normalisation inside the graph: the actions are the tokenizer's decoding of the bins
        np.testing.assert_allclose(got["actions"], tokenizer.decode(got["bins"]), atol=1e-6)


def test_text_encoder_graph_matches_torch_at_any_batch_and_length(exported):
    _ckpt, text_dir, out, _doc = exported
    encoder = TextEncoder.load(text_dir)
    session = _session(out / TEXT_ONNX)
    rng = np.random.default_rng(5)
    for batch, seq in ((1, 3), (4, 17), (2, 40)):
        ids, mask = random_token_batch(encoder.model.config.vocab_size, batch, seq, rng)
        got = run_session(session, {"input_ids": ids, "attention_mask": mask})["text_emb"]
        with torch.no_grad():
            ref = encoder.model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert got.shape == (batch, 32)
        assert np.abs(got - ref).max() <= 1e-4


def test_softmax_reads_float32_in_both_graphs(exported):
    """What an fp16 TensorRT build relies on: every attention softmax and its score matmul are float32."""
    _ckpt, _text, out, _doc = exported
    for name, count in ((POLICY_ONNX, SMALL["depth"]), (TEXT_ONNX, 1)):
        infos = softmax_report(onnx.load(str(out / name)))
        assert len(infos) == count
        for info in infos:
            assert info.input_dtype == "float", info
            assert info.score_node is not None and "MatMul" in info.score_node, info
            assert info.score_input_dtypes == ["float", "float"], info


def _attention_graph(half_scores: bool) -> onnx.ModelProto:
    """q, k float16 (1, 4, 8): with half_scores the scores stay fp16; otherwise Cast to float before MatMul."""
    nodes, q, k = [], "q", "k"
    if not half_scores:
        nodes += [helper.make_node("Cast", ["q"], ["q32"], to=TensorProto.FLOAT, name="cast_q"),
                  helper.make_node("Cast", ["k"], ["k32"], to=TensorProto.FLOAT, name="cast_k")]
        q, k = "q32", "k32"
    nodes += [helper.make_node("Transpose", [k], ["kt"], perm=[0, 2, 1], name="kt"),
              helper.make_node("MatMul", [q, "kt"], ["scores"], name="scores"),
              helper.make_node("Softmax", ["scores"], ["attn"], axis=-1, name="softmax")]
    out_type = TensorProto.FLOAT16 if half_scores else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1, 4, 8]) for n in ("q", "k")],
        [helper.make_tensor_value_info("attn", out_type, [1, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_graph_check_refuses_fp16_softmax_and_accepts_cast_to_float(tmp_path):
    bad, good = tmp_path / "bad.onnx", tmp_path / "good.onnx"
    onnx.save(_attention_graph(half_scores=True), str(bad))
    onnx.save(_attention_graph(half_scores=False), str(good))
    with pytest.raises(ExportError, match="must be float32"):
        check_graph(bad, fold=False)
    report = check_graph(good, fold=False)
    assert report.to_dict()["softmax_fp32"] and report.softmax[0].path == ["scores", "softmax"]


def test_graph_check_names_a_corrupt_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(ExportError, match="broken.onnx"):
        check_graph(path)


def test_parity_failures_are_reported():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 3, 7, 16)).astype(np.float32)
    ref = {"logits": logits, "bins": logits.argmax(-1), "actions": np.zeros((64, 3, 7), np.float32)}
    shifted = logits + rng.normal(scale=0.5, size=logits.shape).astype(np.float32)
    got = {"logits": shifted, "bins": shifted.argmax(-1), "actions": ref["actions"]}
    report = compare_policy("perturbed", ref, got, samples=64)
    assert not report.passed and report.bins_agree < 0.999
    with pytest.raises(ParityError, match="bins agree"):
        report.raise_if_failed()
    assert compare_policy("same", ref, ref, samples=64).passed


def test_logit_tolerance_scales_with_the_logits():
    """float32 rounding grows with the logits: 2e-4 on logits of size 40 is parity, 2e-3 is not."""
    rng = np.random.default_rng(1)
    logits = (40 * rng.standard_normal((16, 2, 7, 64))).astype(np.float32)
    ref = {"logits": logits, "bins": logits.argmax(-1), "actions": np.zeros((16, 2, 7), np.float32)}

    def off_by(delta: float) -> dict:
        return {**ref, "logits": logits + np.float32(delta)}  # a constant offset keeps every argmax

    assert compare_policy("rounding", ref, off_by(2e-4), samples=16).passed
    report = compare_policy("drift", ref, off_by(2e-3), samples=16)
    assert not report.passed and report.bins_agree == 1.0
    with pytest.raises(ParityError, match="logits differ"):
        report.raise_if_failed()


def test_refuses_what_it_cannot_export(tmp_path, exported):
    _ckpt, text, _out, _doc = exported
    ar = random_checkpoint(tmp_path / "ar", preset="tiny", **SMALL, decoder="autoregressive")
    with pytest.raises(ExportError, match="parallel decoder"):
        export_onnx(ar, tmp_path / "x", text_encoder_dir=text, exporter="legacy", log=lambda _m: None)
    latent_cfg = VLAConfig.preset("tiny", **SMALL)  # head "latent": a stage-2 checkpoint
    save_vla(tmp_path / "latent", VLA(latent_cfg), latent_cfg)
    with pytest.raises(CheckpointError, match="latent-pretraining"):
        export_onnx(tmp_path / "latent", tmp_path / "x", text_encoder_dir=text, log=lambda _m: None)
    with pytest.raises(CheckpointError, match="not a VLA checkpoint"):
        export_onnx(text, tmp_path / "x", text_encoder_dir=text, log=lambda _m: None)
    with pytest.raises(CheckpointError, match="not found"):
        export_onnx(tmp_path / "missing", tmp_path / "x", log=lambda _m: None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an export directory"):
        export_onnx(_ckpt, tmp_path / "busy", text_encoder_dir=text, exporter="legacy", log=lambda _m: None)
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tabletop"])
def test_default_dynamo_export(tmp_path, preset):
    """The default exporter (torch.export): tens of seconds, so one small model and few parity samples; the
    `tabletop` recipe adds the state input (dynamic batch) and the l1 head."""
    overrides = {**SMALL, "depth": 1} if preset == "tiny" else STATE_SMALL
    ckpt = random_checkpoint(tmp_path / "ckpt", preset=preset, **overrides)
    text = random_text_encoder(tmp_path / "text_encoder", hidden=32)
    doc = export_onnx(ckpt, tmp_path / "out", text_encoder_dir=text, parity_samples=16, log=lambda _m: None)
    assert doc["exporter"] == "dynamo"
    assert doc["parity"]["policy"]["passed"] and doc["parity"]["text_encoder"]["passed"]
    assert doc["graphs"][TEXT_ONNX]["outputs"]["text_emb"]["shape"] == ["batch", 32]
    if preset == "tabletop":
        assert doc["graphs"][POLICY_ONNX]["inputs"]["state"]["shape"] == ["batch", 8]
    assert all(check["softmax_fp32"] for check in doc["graph_check"].values())


# ------------------------------------------------------------------ proprio state input, l1 head


@pytest.fixture(scope="module")
def exported_state(tmp_path_factory):
    """The `tabletop` recipe (conv + FiLM encoder, proprio state token, l1 head), small."""
    root = tmp_path_factory.mktemp("export_state")
    ckpt = random_checkpoint(root / "ckpt", preset="tabletop", **STATE_SMALL)
    text = random_text_encoder(root / "text_encoder", hidden=32)
    doc = export_onnx(ckpt, root / "out", text_encoder_dir=text, exporter="legacy", parity_samples=32,
                      log=lambda _m: None)
    return ckpt, text, root / "out", doc


def test_state_graph_io_and_metadata(exported_state):
    _ckpt, _text, out, doc = exported_state
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["state_dim"] == 8 and meta["state_input"] == "state" and meta["action_output"] == "l1"
    assert meta["policy_inputs"] == ["image", "text_emb", "state"]
    assert meta["policy_outputs"] == ["actions", "bins", "normalized_actions"]
    assert meta["state_names"][:3] == ["x_m", "y_m", "z_m"] and len(meta["state_names"]) == 8
    policy_io = meta["graphs"][POLICY_ONNX]
    assert policy_io["inputs"]["state"] == {"dtype": "float", "shape": ["batch", 8]}
    assert policy_io["outputs"]["actions"] == {"dtype": "float", "shape": ["batch", 2, 7]}
    assert policy_io["outputs"]["bins"] == {"dtype": "int64", "shape": ["batch", 2, 7]}
    assert policy_io["outputs"]["normalized_actions"] == {"dtype": "float", "shape": ["batch", 2, 7]}
    assert "logits" not in policy_io["outputs"]
    report = doc["parity"]["policy"]
    assert report["passed"] and report["head"] == "l1" and report["samples"] == 32
    assert report["max_abs_diff"] <= 1e-4 and report["cosine"] >= 0.9999
    read = read_metadata(out)
    assert read.state_dim == 8 and read.action_output == "l1" and read.score_output == "normalized_actions"
    assert read.runtime_metadata("onnxruntime")["state_dim"] == 8


def test_state_graph_matches_torch_on_fresh_random_inputs(exported_state):
    ckpt, _text, out, _doc = exported_state
    model, config, tokenizer = load_vla(ckpt)
    session = _session(out / POLICY_ONNX)
    head = model.action_head
    for batch, seed in ((1, 11), (5, 12)):  # dynamic batch
        images, text = config.fake_inputs(batch=batch, seed=seed)
        state = fake_state(batch, seed=seed)
        got = run_session(session, {"image": images.numpy(), "text_emb": text.numpy(), "state": state})
        with torch.no_grad():
            normalized = model(images, text, state=torch.from_numpy(state))
            bins, actions = model.predict_actions(images, text, state=torch.from_numpy(state))
        assert got["actions"].dtype == np.float32 and got["actions"].shape == (batch, 2, 7)
        assert got["bins"].dtype == np.int64 and got["bins"].shape == (batch, 2, 7)
        assert np.abs(got["normalized_actions"] - normalized.numpy()).max() <= 1e-4
        np.testing.assert_allclose(got["actions"], actions.numpy(), atol=1e-6)
        assert (got["bins"] == bins.numpy()).mean() >= 0.999
        # un-normalisation inside the graph: the tokenizer's q01 / q99, gripper 0..1
        np.testing.assert_allclose(got["actions"], head.to_actions(torch.from_numpy(got["normalized_actions"])),
                                   atol=1e-6)
        assert np.all((got["actions"][..., 6] >= 0) & (got["actions"][..., 6] <= 1))
        nearest = np.abs(got["actions"][..., None] - tokenizer.bin_centers()).argmin(-1)  # (B, 2, 7)
        assert (nearest == got["bins"]).mean() >= 0.999  # the token view: each action's nearest bin centre
    # the state reaches the graph: another state, other actions
    images, text = config.fake_inputs(batch=1, seed=3)
    a, b = (run_session(session, {"image": images.numpy(), "text_emb": text.numpy(), "state": fake_state(1, seed=s)})
            for s in (0, 1))
    assert np.abs(a["normalized_actions"] - b["normalized_actions"]).max() > 1e-6


def _l1_runs(rng, n=64, K=2):
    normalized = rng.uniform(-0.5, 0.5, (n, K, 7)).astype(np.float32)
    scale = np.array([0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 0.5], np.float32)
    actions = normalized * scale
    centers = np.linspace(-1, 1, 16)[None, :] * scale[:, None]  # (7, 16)
    bins = np.abs(actions[..., None] - centers).argmin(-1)
    return {"normalized_actions": normalized, "actions": actions, "bins": bins}, centers, scale


def test_l1_parity_excuses_flips_at_bin_boundaries_only():
    rng = np.random.default_rng(0)
    ref, centers, scale = _l1_runs(rng)
    assert compare_policy("same", ref, ref, samples=64).passed
    # an action a hair from a bin boundary flips its bin: reported, not a failure
    boundary = {k: v.copy() for k, v in ref.items()}
    mid = (centers[0, 7] + centers[0, 8]) / 2
    boundary["actions"][0, 0, 0] = mid - 1e-9
    boundary["normalized_actions"][0, 0, 0] = boundary["actions"][0, 0, 0] / scale[0]
    boundary["bins"][0, 0, 0] = 7
    flipped = {k: v.copy() for k, v in boundary.items()}
    flipped["actions"][0, 0, 0] = mid + 1e-9
    flipped["bins"][0, 0, 0] = 8
    report = compare_policy("boundary", boundary, flipped, samples=64)
    assert report.passed and report.head == "l1" and report.flips == 1 and report.near_tie_flips == 1
    assert "at bin boundaries" in report.summary()
    # drift in the predictions fails, whatever the bins do
    drifted = {**ref, "normalized_actions": ref["normalized_actions"] + np.float32(3e-4)}
    report = compare_policy("drift", ref, drifted, samples=64)
    assert not report.passed and report.bins_agree == 1.0
    with pytest.raises(ParityError, match="normalized actions differ"):
        report.raise_if_failed()
    # many flips far from any boundary fail on the bins and the actions
    shifted = {k: v.copy() for k, v in ref.items()}
    shifted["bins"] = (ref["bins"] + 1) % 16
    shifted["actions"] = ref["actions"] + 0.2 * scale
    report = compare_policy("shifted", ref, shifted, samples=64)
    assert not report.passed and any("bins agree" in f for f in report.failures)
    assert any("actions differ" in f for f in report.failures)
    # reduced precision (no absolute tolerance): the cosine of the predictions decides
    assert compare_policy("fp16", ref, ref, samples=64, logits_atol=None, min_cosine=0.999).passed


def test_a_graph_with_state_under_metadata_without_it_is_refused(exported_state, tmp_path):
    _ckpt, _text, out, _doc = exported_state
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    meta = json.loads((copy / METADATA_FILE).read_text())
    for key in ("state_dim", "state_input", "policy_inputs", "policy_outputs", "state_names"):
        meta.pop(key)
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    io = {k: {n: v["shape"] for n, v in d.items()} for k, d in meta["graphs"][POLICY_ONNX].items()}
    with pytest.raises(ExportError, match=r"takes inputs \['state'\] that metadata.json does not describe"):
        check_io(read_metadata(copy), POLICY_ONNX, io["inputs"], io["outputs"])
    meta["state_dim"], meta["state_input"] = 8, "proprio"
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="state_input 'proprio'"):
        read_metadata(copy)
    meta["state_input"], meta["action_output"] = "state", "bins"  # the graph has no logits
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="lack \\['logits'\\]"):
        check_io(read_metadata(copy), POLICY_ONNX, io["inputs"], io["outputs"])


def test_an_export_from_before_the_state_input_still_loads(exported, tmp_path):
    _ckpt, _text, out, _doc = exported
    copy = Path(shutil.copytree(out, tmp_path / "old"))
    meta = json.loads((copy / METADATA_FILE).read_text())
    assert meta["state_dim"] == 0 and meta["state_input"] is None and meta["action_output"] == "bins"
    assert meta["policy_outputs"] == ["actions", "bins", "logits"]
    for key in ("state_dim", "state_input", "state_names", "action_output", "policy_inputs", "policy_outputs"):
        meta.pop(key)
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    old = read_metadata(copy)
    assert old.state_dim == 0 and old.action_output == "bins" and old.score_output == "logits"
    io = {k: {n: v["shape"] for n, v in d.items()} for k, d in meta["graphs"][POLICY_ONNX].items()}
    check_io(old, POLICY_ONNX, io["inputs"], io["outputs"])
    assert old.runtime_metadata("x")["state_dim"] == 0
