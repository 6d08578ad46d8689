"""NSVQ quantiser: noise substitution, hard codes at eval, latent = last - first, dead codes."""

from __future__ import annotations

import warnings

import pytest
import torch

from lapa.laq.config import LAQConfig
from lapa.laq.model import LAQ
from lapa.laq.nsvq import NSVQ, dead_code_schedule


@pytest.fixture(scope="module")
def cfg() -> LAQConfig:
    return LAQConfig.preset("tiny")


def _model(cfg: LAQConfig, seed: int = 0) -> LAQ:
    torch.manual_seed(seed)
    return LAQ(cfg)


def test_gradients_reach_encoder_and_codebook(cfg: LAQConfig) -> None:
    model = _model(cfg).train()
    model(cfg.fake_inputs(4)).loss.backward()
    for name in ("nsvq.codebook", "nsvq.project_in.weight", "nsvq.conv.0.weight", "temporal.blocks.0.attn.to_q.weight",
                 "spatial.blocks.0.mlp.fc.weight", "patch_embed.net.1.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None, name
        assert grad.abs().sum() > 0, name


def test_training_noise_has_the_quantisation_error_norm(cfg: LAQConfig) -> None:
    """q = x + (||x - e|| / ||v|| + eps) v  =>  ||q - x|| == ||x - e|| (up to eps ||v||)."""
    nsvq = NSVQ(cfg).train()
    first, last = torch.randn(3, cfg.num_patches, cfg.dim), torch.randn(3, cfg.num_patches, cfg.dim)
    out = nsvq(first, last)
    noise_norm = (out.quantized - out.latent).norm(dim=-1)
    err_norm = (out.latent - nsvq.codebook[out.codes]).norm(dim=-1)
    torch.testing.assert_close(noise_norm, err_norm, rtol=1e-4, atol=1e-5)
    assert not torch.equal(out.quantized, nsvq.codebook[out.codes])


def test_eval_uses_hard_codes_and_is_deterministic(cfg: LAQConfig) -> None:
    model = _model(cfg).eval()
    x = cfg.fake_inputs(3)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.codes.dtype == torch.int64 and a.codes.shape == (3, cfg.latent_seq_len)
    assert torch.equal(a.quantized, model.nsvq.codebook[a.codes])
    assert torch.equal(a.recon, b.recon) and torch.equal(a.codes, b.codes)
    assert torch.equal(model.encode_codes(x[:, 0], x[:, 1]), a.codes)


def test_train_mode_is_stochastic(cfg: LAQConfig) -> None:
    model = _model(cfg).train()
    x = cfg.fake_inputs(3)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a.codes, b.codes)  # the nearest code does not depend on the noise
    assert not torch.allclose(a.quantized, b.quantized)
    assert not torch.allclose(a.recon, b.recon)


def test_latent_is_last_minus_first(cfg: LAQConfig) -> None:
    model = _model(cfg).eval()
    x = cfg.fake_inputs(2)
    same = torch.stack((x[:, 0], x[:, 0]), dim=1)  # no motion
    with torch.no_grad():
        still = model(same).latent
        moving = model(x).latent
        _, first, last = model.encode(x[:, 0].float() / 255, x[:, 1].float() / 255)
        expected = model.nsvq.encode_frame(last) - model.nsvq.encode_frame(first)
    assert still.abs().max() < 1e-5
    assert moving.abs().max() > 1e-3
    torch.testing.assert_close(moving, expected)


def test_dead_code_replacement_revives_unused_codes(cfg: LAQConfig) -> None:
    model = _model(cfg).train()
    nsvq = model.nsvq
    x = cfg.fake_inputs(8)
    with torch.no_grad():
        nsvq.codebook[1:] = 1e3  # every latent is nearest to code 0: a collapsed codebook
        out = model(x)
    assert set(out.codes.unique().tolist()) == {0}
    assert nsvq.usage_since_reset.tolist() == [8 * cfg.latent_seq_len] + [0] * (cfg.codebook_size - 1)
    before = nsvq.codebook.detach().clone()

    replaced = nsvq.replace_dead_codes(batch_size=8)

    assert replaced.tolist() == list(range(1, cfg.codebook_size))
    assert torch.equal(nsvq.codebook[0], before[0])  # the live code is kept
    assert not torch.isclose(nsvq.codebook[1:], before[1:]).any()
    assert nsvq.usage_since_reset.sum() == 0  # a new window starts
    with torch.no_grad():
        codes = model.eval()(x).codes
    assert len(set(codes.unique().tolist()) - {0}) >= 2  # revived codes are picked now


def test_replacement_needs_evidence(cfg: LAQConfig) -> None:
    nsvq = NSVQ(cfg)
    before = nsvq.codebook.detach().clone()
    assert nsvq.replace_dead_codes(batch_size=8).numel() == 0  # nothing counted since the reset
    assert torch.equal(nsvq.codebook, before)


def test_collapse_guard_warns(cfg: LAQConfig) -> None:
    nsvq = NSVQ(cfg)
    k = cfg.codebook_size
    with pytest.warns(RuntimeWarning, match="collapse"):
        assert nsvq.check_collapse(10, torch.tensor([100] * 3 + [0] * (k - 3))) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert nsvq.check_collapse(10, torch.full((k,), 5)) == k


def test_dead_code_schedule() -> None:
    steps = [s for s in range(0, 10_000) if dead_code_schedule(s)]
    expected = list(range(10, 100, 10)) + list(range(100, 1000, 100)) + list(range(1000, 4501, 500))
    assert steps == expected


@pytest.mark.parametrize(("seq_len", "image", "patch"), [(1, 64, 8), (2, 64, 8), (4, 64, 8), (16, 128, 8)])
def test_latent_tokens_match_latent_seq_len(seq_len: int, image: int, patch: int) -> None:
    cfg = LAQConfig.preset("tiny", latent_seq_len=seq_len, image_size=image, patch_size=patch)
    nsvq = NSVQ(cfg)
    tokens = torch.randn(2, cfg.num_patches, cfg.dim)
    out = nsvq(tokens, tokens.flip(0))
    assert out.latent.shape == (2, seq_len, cfg.quant_dim)
    assert out.codes.shape == (2, seq_len)
    assert out.tokens.shape == (2, seq_len, cfg.dim)


def test_paper_grid_gives_four_tokens_with_3x3_convs() -> None:
    cfg = LAQConfig.preset("paper")
    assert cfg.grid_size == 8 and cfg.latent_grid == (2, 2) and cfg.quant_kernel == (3, 3)


def test_too_many_latent_tokens_is_rejected() -> None:
    with pytest.raises(ValueError, match="latent grid"):
        LAQConfig.preset("tiny", latent_seq_len=25)  # 8x8 patches -> 4x4 after the stride-2 conv
