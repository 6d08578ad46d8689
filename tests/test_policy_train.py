"""Stages 2 and 3 on a tiny recorded dataset: latent pretraining, finetuning, exact resume, baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from vla_fakes import FakeEncoder

from lapa.checkpoint import CheckpointError
from lapa.cli import main as lapa_main
from lapa.errors import UserError
from lapa.policy.checkpoint_io import checkpoint_extra, load_vla
from lapa.policy.config import VLAConfig
from lapa.policy.datasets import (
    ActionSet,
    LatentSet,
    augment_images,
    read_pseudo_actions,
    write_pseudo_actions,
)
from lapa.policy.train import (
    TrainOptions,
    evaluate_actions,
    finetune_actions,
    pretrain_actions,
    pretrain_latent,
    resolve_vla_checkpoint,
    run_step,
)
from lapa.policy.vpt import run_vpt

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=2, num_bins=16)


def _config() -> VLAConfig:
    return VLAConfig.preset("tiny", **SMALL)


def _opts(steps: int, **kw) -> TrainOptions:
    return TrainOptions(steps=steps, batch_size=4, ckpt_every=2, log_every=1, progress=False, **kw)


@pytest.fixture(scope="module")
def labels(robot, tmp_path_factory):
    """A label file from a 2-step LAQ (the codes mean nothing; the plumbing is what is tested)."""
    run = tmp_path_factory.mktemp("laq") / "laq"
    out = run.parent / "labels.parquet"
    base = ["laq", "train", "--data", str(robot), "--out", str(run), "--batch-size", "4", "--workers", "0",
            "--steps", "2", "--threads", "1"]
    assert lapa_main(base) == 0
    assert lapa_main(["laq", "label", "--ckpt", str(run), "--data", str(robot), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def latent_run(labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "latent"
    result = pretrain_latent(labels, out, config=_config(), opts=_opts(2), encoder=FakeEncoder())
    assert result.steps == 2
    return out


# ----------------------------------------------------------------------------- data


def test_action_set_chunks_are_padded_and_masked(robot):
    data = ActionSet.from_lerobot([robot], 32, 3, FakeEncoder())
    T0 = data.clips.length(0)
    episodes = len(data.clips.keys)
    # the recorder's synthetic final "hold" step is dropped: one sample fewer per episode
    assert len(data) == int(data.clips.offsets[-1]) - episodes and data.clips.frames.shape[1:] == (32, 32, 3)
    assert [len(a) for a in data.actions] == [data.clips.length(c) - 1 for c in range(episodes)]
    assert not any(np.all(a[:, :6] == 0, axis=1).any() for a in data.actions), "no exact-zero motion left"
    last = T0 - 2  # the last real step of episode 0: only its own action is real
    assert data.masks[last].tolist() == [True, False, False]
    assert np.array_equal(data.chunks[last], np.repeat(data.actions[0][-1:], 3, axis=0))
    assert np.array_equal(data.chunks[0], data.actions[0][:3])
    assert data.frame_rows[T0 - 1] == T0, "episode 1 starts right after episode 0's frames"
    kept = ActionSet(data.clips, data.clips.actions, 3, FakeEncoder(), drop_final_hold=False)
    assert len(kept) == int(data.clips.offsets[-1])
    with pytest.raises(RuntimeError, match="set_tokenizer"):
        data.sample(np.random.default_rng(0), 2)
    from lapa.policy.action_tokenizer import ActionTokenizer

    data.set_tokenizer(ActionTokenizer.fit_new(data.all_actions(), num_bins=16))
    batch = data.sample(np.random.default_rng(0), 5)
    assert batch.images.shape == (5, 32, 32, 3) and batch.images.dtype == torch.uint8
    assert batch.text.shape == (5, 384) and batch.bins.shape == (5, 3, 7) and batch.mask.shape == (5, 3)
    again = data.sample(np.random.default_rng(0), 5)
    assert torch.equal(batch.bins, again.bins), "a seeded generator draws the same batch"


def test_latent_set_reads_frames_at_the_labelled_index(labels):
    data = LatentSet(labels, 32, FakeEncoder())
    assert data.latent_seq_len == 4 and data.codebook_size == 8
    batch = data.sample(np.random.default_rng(1), 6)
    assert batch.images.shape == (6, 32, 32, 3) and batch.codes.shape == (6, 4)
    assert set(data.table.texts) <= {t for t in data.clips.instructions}


def test_augmentation_keeps_shape_and_range():
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    out = augment_images(images, np.random.default_rng(0))
    assert out.shape == (4, 32, 32, 3) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert not torch.allclose(out, images.float() / 255.0)


def test_pseudo_action_file_round_trip(tmp_path):
    keys = [("/a", 0), ("/a", 1), ("/b", 0)]
    acts = [np.random.default_rng(i).normal(size=(n, 7)).astype(np.float32) for i, n in enumerate((3, 5, 2))]
    path = write_pseudo_actions(tmp_path / "p.parquet", keys, acts, {"idm_checkpoint": "x"})
    got_keys, got = read_pseudo_actions(path)
    assert got_keys == keys and all(np.array_equal(a, b) for a, b in zip(acts, got, strict=True))


# ----------------------------------------------------------------------------- stages


def test_latent_pretraining_writes_checkpoints_metrics_and_curves(latent_run):
    ckpt = resolve_vla_checkpoint(latent_run)
    model, config, tok = load_vla(ckpt)
    assert config.head == "latent" and tok is None and run_step(latent_run) == 2
    assert checkpoint_extra(ckpt)["provenance"]["stage"] == "latent_pretrain"
    rows = [json.loads(x) for x in (latent_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert (latent_run / "loss.png").is_file()


def test_finetune_from_latent_resumes_exactly(latent_run, robot, tmp_path):
    enc = FakeEncoder()
    straight = tmp_path / "straight"
    finetune_actions(latent_run, [robot], straight, opts=_opts(4), encoder=enc)
    split = tmp_path / "split"
    first = finetune_actions(latent_run, [robot], split, opts=_opts(2), encoder=enc)
    assert first.steps == 2
    with pytest.raises(UserError, match="resume"):
        finetune_actions(latent_run, [robot], split, opts=_opts(4), encoder=enc)
    second = finetune_actions(latent_run, [robot], split, opts=_opts(4), encoder=enc, resume=True)
    assert (second.start_step, second.steps) == (2, 4)

    a, config, tok = load_vla(resolve_vla_checkpoint(straight))
    b, _, _ = load_vla(resolve_vla_checkpoint(split))
    assert config.head == "action" and tok is not None and tok.num_bins == 16
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name} differs after resume"
    prov = checkpoint_extra(resolve_vla_checkpoint(split))["provenance"]
    assert prov["stage"] == "finetune" and prov["action_head"].startswith("new (latent head dropped)")
    steps = [json.loads(x)["step"] for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], "no duplicated metrics after a resume"


def test_finetune_from_scratch(robot, tmp_path):
    r = finetune_actions("scratch", [robot], tmp_path / "s", config=_config(), opts=_opts(2, augment=True),
                         encoder=FakeEncoder())
    _, config, _ = load_vla(r.checkpoint)
    assert config.head == "action" and config.image_size == 32 and np.isfinite(r.final_loss)
    row = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "accuracy", "translation_mae_mm", "gripper_accuracy"} <= set(row)
    held_out = evaluate_actions(tmp_path / "s", [robot], encoder=FakeEncoder())
    assert held_out["steps"] > 0
    assert {"loss", "accuracy", "translation_mae_mm", "direction_cosine", "gripper_accuracy"} <= set(held_out)
    assert np.isfinite(held_out["loss"]) and 0 <= held_out["gripper_accuracy"] <= 1


def test_actionvla_pretraining_then_finetuning_keeps_or_replaces_the_head(robot, tmp_path):
    enc = FakeEncoder()
    pre = pretrain_actions([robot], tmp_path / "pre", config=_config(), opts=_opts(2), encoder=enc)
    assert pre.steps == 2
    kept = finetune_actions(tmp_path / "pre", [robot], tmp_path / "ft", opts=_opts(2), encoder=enc)
    assert checkpoint_extra(kept.checkpoint)["provenance"]["action_head"].startswith("kept")
    new = finetune_actions(tmp_path / "pre", [robot], tmp_path / "ft3", chunk_size=3, opts=_opts(2), encoder=enc)
    _, config, _ = load_vla(new.checkpoint)
    assert config.chunk_size == 3
    assert checkpoint_extra(new.checkpoint)["provenance"]["action_head"].startswith("new (shape changed)")


def test_vpt_idm_pseudo_labels_and_pretraining(robot, tmp_path):
    out = tmp_path / "vpt"
    r = run_vpt([robot], [robot], out, config=_config(), opts=_opts(2), idm_steps=2, idm_batch_size=4,
                encoder=FakeEncoder())
    assert r.steps == 2 and (out / "idm" / "model.safetensors").is_file()
    keys, acts = read_pseudo_actions(out / "pseudo_actions.parquet")
    assert len(keys) == 3 and all(a.shape[1] == 7 and set(np.unique(a[:, 6])) <= {0.0, 1.0} for a in acts)
    quality = json.loads((out / "pseudo_quality.json").read_text())
    assert {"translation_mae_mm", "gripper_accuracy"} <= set(quality["vs_recorded_actions"])
    assert checkpoint_extra(r.checkpoint)["provenance"]["stage"] == "vpt_pretrain"
    with pytest.raises(UserError, match="resume"):
        run_vpt([robot], [robot], out, config=_config(), opts=_opts(2), idm_steps=2, encoder=FakeEncoder())


def test_a_checkpoint_with_a_missing_or_mismatched_tensor_fails_clearly(latent_run, tmp_path):
    import shutil

    src = resolve_vla_checkpoint(latent_run)
    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    state = load_file(missing / "model.safetensors")
    del state["blocks.0.attn.qkv.weight"]
    save_file(state, missing / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: blocks\.0\.attn\.qkv\.weight"):
        load_vla(missing)

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    state = load_file(bad / "model.safetensors")
    state["pos_emb"] = torch.zeros(1, 3, 64)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatch: pos_emb \(checkpoint \(1, 3, 64\)"):
        load_vla(bad)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        finetune_actions(bad, [], tmp_path / "x", encoder=FakeEncoder())


def test_resume_with_another_model_config_fails(latent_run, labels):
    bigger = _config().replace(depth=3)
    with pytest.raises(CheckpointError, match="depth"):
        pretrain_latent(labels, latent_run, config=bigger, opts=_opts(4), resume=True, encoder=FakeEncoder())


def test_cli_finetune_from_scratch(robot, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "finetune", "--init", "scratch", "--data", str(robot), "--out", str(out), "--steps", "1",
            "--batch-size", "2", "--image-size", "32", "--chunk-size", "2", "--num-bins", "16", "--threads", "1"]
    assert lapa_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 1 and doc["checkpoint"].endswith("step_00000001") and run_step(out) == 1
    assert lapa_main(args) == 2, "an existing run without --resume is refused"
    assert lapa_main(args[:-2] + ["--steps", "2", "--resume", "--threads", "1"]) == 0 and run_step(out) == 2


def test_cosine_schedule_decays_to_a_tenth_and_constant_stays():
    from lapa.policy.train import MIN_LR_FRACTION, TrainOptions

    cosine = TrainOptions(steps=101, lr=1e-3, lr_schedule="cosine")
    lrs = [cosine.lr_at(s) for s in range(101)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(MIN_LR_FRACTION * 1e-3)
    assert lrs[50] == pytest.approx(0.5 * (1e-3 + MIN_LR_FRACTION * 1e-3))
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert TrainOptions(steps=101, lr=1e-3).lr_at(80) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainOptions(lr_schedule="step")


def test_decay_start_holds_the_rate_then_decays_to_a_tenth():
    from lapa.policy.train import MIN_LR_FRACTION, TrainOptions

    wsd = TrainOptions(steps=201, lr=1e-3, lr_schedule="cosine", lr_decay_start=100)
    assert [wsd.lr_at(s) for s in (0, 50, 100)] == pytest.approx([1e-3] * 3)
    assert wsd.lr_at(150) == pytest.approx(0.5 * (1e-3 + MIN_LR_FRACTION * 1e-3))
    assert wsd.lr_at(200) == pytest.approx(MIN_LR_FRACTION * 1e-3)
    decay = [wsd.lr_at(s) for s in range(100, 201)]
    assert all(a > b for a, b in zip(decay[:-1], decay[1:], strict=True))
    with pytest.raises(ValueError, match="lr_decay_start"):
        TrainOptions(steps=100, lr_schedule="cosine", lr_decay_start=100)


# ----------------------------------------------------------------------------- a latent head beside the action head


def test_a_latent_head_beside_the_action_head_leaves_acting_untouched(latent_run, labels, robot, tmp_path, capsys):
    """`lapa train latent-head`: only the latent head learns; the policy's actions stay bit for bit."""
    enc = FakeEncoder()
    policy_run = tmp_path / "ft"
    finetune_actions(latent_run, [robot], policy_run, opts=_opts(2), encoder=enc)
    policy, _, _ = load_vla(resolve_vla_checkpoint(policy_run))
    assert policy.latent_head is None and not policy.config.latent_head
    out = tmp_path / "lh"
    assert lapa_main(["train", "latent-head", "--ckpt", str(policy_run), "--labels", str(labels),
                      "--latent-init", str(latent_run), "--out", str(out), "--steps", "3", "--batch-size", "4",
                      "--threads", "1", "--ckpt-every", "3"]) == 0
    both, config, tokenizer = load_vla(resolve_vla_checkpoint(out))
    assert config.head == "action" and config.latent_head and tokenizer is not None
    before = policy.state_dict()
    after = both.state_dict()
    assert set(after) - set(before) == {k for k in after if k.startswith("latent_head.")} != set()
    assert all(torch.equal(before[k], after[k]) for k in before), "everything but the latent head is frozen"
    pretrained, _, _ = load_vla(resolve_vla_checkpoint(latent_run))
    assert not torch.equal(after["latent_head.proj.weight"], pretrained.latent_head.proj.weight), "the head learnt"
    images, text = config.fake_inputs(batch=2)
    state = torch.zeros(2, config.state_input_dim) if config.state_dim else None
    with torch.no_grad():
        torch.testing.assert_close(both(images, text, state=state), policy(images, text, state=state), rtol=0, atol=0)
        logits = both.latent_logits(images, text)
    assert logits.shape == (2, config.latent_seq_len, config.latent_codebook_size)
    assert checkpoint_extra(resolve_vla_checkpoint(out))["provenance"]["stage"] == "latent_head"
    assert lapa_main(["train", "latent-head", "--ckpt", str(latent_run), "--labels", str(labels),
                      "--out", str(tmp_path / "bad"), "--steps", "1"]) != 0
    assert "not a finetuned policy" in capsys.readouterr().err
