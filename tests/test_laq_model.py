"""LAQ model: shapes, sizes, the decoder's stop-gradient, the world-model API, the config."""

from __future__ import annotations

import pytest
import torch

from lapa.laq.config import LAQConfig
from lapa.laq.metrics import code_usage, codebook_perplexity, psnr
from lapa.laq.model import LAQ


@pytest.fixture(scope="module")
def cfg() -> LAQConfig:
    return LAQConfig.preset("tiny")


@pytest.fixture()
def model(cfg: LAQConfig) -> LAQ:
    torch.manual_seed(0)
    return LAQ(cfg)


def test_tiny_output_shapes(cfg: LAQConfig, model: LAQ) -> None:
    B, L, K = 3, cfg.latent_seq_len, cfg.codebook_size
    out = model(cfg.fake_inputs(B))
    assert out.recon.shape == (B, 64, 64, 3) and out.recon.dtype == torch.float32
    assert out.codes.shape == (B, L) and out.codes.dtype == torch.int64
    assert out.loss.shape == () and out.loss.item() > 0
    assert out.quantized.shape == out.latent.shape == (B, L, cfg.quant_dim)
    assert out.usage.shape == (L, K) and out.usage.sum(1).tolist() == [B] * L
    assert 0 < model.num_params() < 5_000_000


def test_paper_preset_size_on_meta_device() -> None:
    with torch.device("meta"):
        model = LAQ(LAQConfig.preset("paper"))
    n = model.num_params()
    assert 300e6 < n < 400e6, n
    assert model.nsvq.codebook.shape == (8, 32)


def test_loss_is_pixel_mse_against_the_second_frame(cfg: LAQConfig, model: LAQ) -> None:
    x = cfg.fake_inputs(2)
    out = model.eval()(x)
    expected = ((out.recon - x[:, 1].float() / 255) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)


def test_uint8_and_float_inputs_agree(cfg: LAQConfig, model: LAQ) -> None:
    x = cfg.fake_inputs(2)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x.float() / 255)
    torch.testing.assert_close(a.recon, b.recon)
    assert torch.equal(a.codes, b.codes)


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (2, 3, 64, 64, 3), (2, 2, 32, 32, 3), (2, 2, 3, 64, 64)])
def test_bad_frame_shapes_are_rejected(model: LAQ, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="frame"):
        model(torch.zeros(shape, dtype=torch.uint8))


def test_decoder_queries_are_stop_gradient(cfg: LAQConfig, model: LAQ) -> None:
    """The decoder path alone must put no gradient into the patch embedding."""
    x = cfg.fake_inputs(2)
    emb_t = model.embed(x[:, 0].float() / 255)  # tracks gradients into patch_embed
    assert emb_t.requires_grad
    actions = torch.randn(2, cfg.latent_seq_len, cfg.dim)
    recon = model.decode_tokens(emb_t, actions)
    ((recon - x[:, 1].float() / 255) ** 2).mean().backward()
    assert model.decoder.blocks[0].attn.to_q.weight.grad.abs().sum() > 0  # the decoder did learn
    for name, p in model.patch_embed.named_parameters():
        assert p.grad is None, f"patch_embed.{name} got a gradient through the decoder"


def test_patch_embedding_learns_only_through_the_encoder(cfg: LAQConfig, model: LAQ) -> None:
    model.train()
    x = cfg.fake_inputs(2)
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    loss = model(x).loss
    hook.remove()
    queries = seen[0]
    # the queries depend on the decoder position embedding only, never on the patch embedding
    grads = torch.autograd.grad(queries.sum(), list(model.patch_embed.parameters()), allow_unused=True,
                                retain_graph=True)
    assert all(g is None for g in grads)
    loss.backward()
    assert model.patch_embed.net[1].weight.grad.abs().sum() > 0  # via the encoder + NSVQ


def test_world_model_api(cfg: LAQConfig, model: LAQ) -> None:
    x = cfg.fake_inputs(2)
    model.eval()
    with torch.no_grad():
        codes = model.encode_codes(x[:, 0], x[:, 1])
        pred = model.decode(x[:, 0], codes)
        out = model(x)
        rollout = model.decode_sequence(x[:, 0], [codes, codes.flip(1), codes])
    assert codes.shape == (2, cfg.latent_seq_len) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < cfg.codebook_size
    assert pred.shape == (2, 64, 64, 3) and 0 <= float(pred.min()) and float(pred.max()) <= 1
    torch.testing.assert_close(pred, out.recon.clamp(0, 1))
    assert rollout.shape == (2, 3, 64, 64, 3)
    torch.testing.assert_close(rollout[:, 0], pred)
    torch.testing.assert_close(rollout[:, 1], model.decode(pred, codes.flip(1)))
    with pytest.raises(ValueError, match="codes"):
        model.decode(x[:, 0], codes[:, :2])


def test_different_codes_decode_differently(cfg: LAQConfig, model: LAQ) -> None:
    x = cfg.fake_inputs(1)[:, 0]
    model.eval()
    with torch.no_grad():
        a = model.decode(x, torch.zeros(1, cfg.latent_seq_len, dtype=torch.int64))
        b = model.decode(x, torch.ones(1, cfg.latent_seq_len, dtype=torch.int64))
    assert not torch.allclose(a, b)


def test_config_validation_and_round_trip() -> None:
    cfg = LAQConfig.preset("tiny", codebook_size=16, latent_seq_len=1)
    assert LAQConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        LAQConfig.preset("tiny", image_size=60)
    with pytest.raises(ValueError, match="dim_head"):
        LAQConfig.preset("tiny", heads=3)
    with pytest.raises(ValueError, match="codebook_size"):
        LAQConfig.preset("tiny", codebook_size=1)
    with pytest.raises(ValueError, match="unknown"):
        LAQConfig.from_dict({**cfg.to_dict(), "dimm": 3})
    with pytest.raises(ValueError, match="preset"):
        LAQConfig.preset("huge")


def test_fake_inputs_are_seeded_uint8_pairs(cfg: LAQConfig) -> None:
    a, b, c = cfg.fake_inputs(2, seed=1), cfg.fake_inputs(2, seed=1), cfg.fake_inputs(2, seed=2)
    assert a.shape == (2, 2, 64, 64, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_metrics() -> None:
    target = torch.rand(2, 8, 8, 3)
    noisy = (target + 0.1).clamp(0, 1)
    assert psnr(target, target) > 90
    assert 10 < float(psnr(noisy, target)) < 30
    assert psnr(noisy, target, reduction="none").shape == (2,)
    codes = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]])
    assert code_usage(codes, 4).tolist() == [[1, 1, 1, 1], [0, 4, 0, 0]]
    torch.testing.assert_close(codebook_perplexity(codes, 4), torch.tensor([4.0, 1.0]))
