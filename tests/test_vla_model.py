"""VLA model: shapes for both presets, masks, head replacement, the two action decoders, losses."""

import numpy as np
import pytest
import torch
from vla_fakes import fit_tokenizer

from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA, action_loss, latent_loss

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = dict(image_size=32, patch_size=8, dim=64, depth=2, heads=2, chunk_size=2)


def _tokenizer(num_bins: int = 256) -> ActionTokenizer:
    return fit_tokenizer(500, num_bins)


def _model(seed: int = 0, **overrides) -> VLA:
    torch.manual_seed(seed)
    return VLA(VLAConfig.preset("tiny", **{**SMALL, **overrides})).eval()


def _action_model(decoder: str = "parallel", seed: int = 0, num_bins: int = 256) -> VLA:
    model = _model(seed, num_bins=num_bins)
    return model.replace_head_for_actions(_tokenizer(num_bins), decoder=decoder).eval()


def test_config_validation_and_dict_round_trip():
    c = VLAConfig.preset("tiny")
    assert VLAConfig.from_dict(c.to_dict()) == c
    for bad in (dict(chunk_size=0), dict(chunk_size=9), dict(image_size=60), dict(head="x"),
                dict(decoder="beam"), dict(dim=130), dict(action_dim=6), dict(num_bins=255)):
        with pytest.raises(ValueError):
            VLAConfig.preset("tiny", **bad)
    with pytest.raises(ValueError, match="unknown"):
        VLAConfig.from_dict({**c.to_dict(), "bogus": 1})


def test_tiny_shapes_latent_then_action():
    c = VLAConfig.preset("tiny")
    torch.manual_seed(0)
    model = VLA(c).eval()
    images, text = c.fake_inputs(2)
    assert images.dtype == torch.uint8 and images.shape == (2, 64, 64, 3) and text.shape == (2, 384)
    with torch.no_grad():
        assert model(images, text).shape == (2, c.latent_seq_len, c.latent_codebook_size)
    assert model.predict_latents(images, text).shape == (2, 4)
    model.replace_head_for_actions(_tokenizer())
    with torch.no_grad():
        assert model(images, text).shape == (2, 4, 7, 256)
    bins, actions = model.predict_actions(images, text)
    assert bins.dtype == torch.int64 and bins.shape == (2, 4, 7)
    assert actions.dtype == torch.float32 and actions.shape == (2, 4, 7)


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_base_shapes_on_meta(decoder):
    c = VLAConfig.preset("base")
    with torch.device("meta"):
        model = VLA(c)
        images = torch.empty(2, c.image_size, c.image_size, 3, dtype=torch.uint8)
        text = torch.empty(2, c.text_dim)
        assert model(images, text).shape == (2, 4, 8)
        model.replace_head_for_actions(_tokenizer(), chunk_size=8, decoder=decoder)
        bins = torch.zeros(2, 8, 7, dtype=torch.long) if decoder == "autoregressive" else None
        assert model(images, text, bins).shape == (2, 8, 7, 256)
    assert 10e6 < model.num_params() < 30e6


def test_inputs_are_validated():
    model = _model()
    images, text = model.config.fake_inputs(1)
    with pytest.raises(ValueError, match="images"):
        model(images[:, :16], text)
    with pytest.raises(ValueError, match="text_emb"):
        model(images, text[:, :10])


def test_uint8_and_unit_float_images_agree_and_batch_rows_are_independent():
    model = _model()
    images, text = model.config.fake_inputs(3)
    with torch.no_grad():
        out = model(images, text)
        torch.testing.assert_close(model(images.float() / 255.0, text), out)
        torch.testing.assert_close(model(images[1:2], text[1:2]), out[1:2], atol=1e-5, rtol=1e-5)


def test_prefix_does_not_see_queries():
    model = _model()
    images, text = model.config.fake_inputs(1)
    P = model.config.prefix_len
    blocked = model.attn_blocked
    assert blocked[:P, P:].all() and not blocked[:P, :P].any() and not blocked[P:, :P].any()

    def prefix_features(queries):
        x = torch.cat([model.embed_prefix(images, text), queries], dim=1)
        for block in model.blocks:
            x = block(x, model.attn_blocked)
        return x[:, :P]

    with torch.no_grad():
        q = model.latent_head.query_tokens(1)
        torch.testing.assert_close(prefix_features(q), prefix_features(torch.randn_like(q)), atol=0, rtol=0)


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_the_last_block_on_the_query_rows_equals_the_full_block(decoder):
    """run_trunk computes the last block for the query rows only (the prefix rows' outputs are never
    read): the same outputs as every row through every block, causal queries included."""
    model = _action_model(decoder)
    images, text = model.config.fake_inputs(3, seed=2)
    with torch.no_grad():
        prefix = model.embed_prefix(images, text)
        bins = torch.randint(0, 256, (3, model.config.chunk_size, 7)) if decoder == "autoregressive" else None
        queries = model._action_head().query_tokens(3, bins)
        x = torch.cat([prefix, queries], dim=1)
        for block in model.blocks:
            x = block(x, model.attn_blocked)
        full = model.norm(x[:, prefix.shape[1]:])  # (B, Q, D)
        trimmed = model.run_trunk(prefix, queries)
    assert trimmed.shape == full.shape
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-5)


def test_head_replacement_keeps_the_trunk():
    model = _model()
    trunk = {k: v.clone() for k, v in model.trunk_state_dict().items()}
    assert any(k.startswith("latent_head.") for k in model.state_dict())
    model.replace_head_for_actions(_tokenizer(), chunk_size=3)
    after = model.state_dict()
    assert not any(k.startswith("latent_head.") for k in after)
    assert any(k.startswith("action_head.") for k in after)
    assert model.config.head == "action" and model.config.chunk_size == 3
    assert set(model.trunk_state_dict()) == set(trunk)
    for k, v in trunk.items():
        assert torch.equal(after[k], v), k
    with pytest.raises(RuntimeError, match="action head"):
        model.latent_logits(*model.config.fake_inputs(1))


def test_parallel_decoders_agree_under_argmax():
    """A parallel model decoded in one pass == the same model decoded token by token."""
    model = _action_model("parallel", seed=1)
    images, text = model.config.fake_inputs(3, seed=5)
    bins_one_pass, actions = model.predict_actions(images, text, decoder="parallel")
    bins_loop, actions_loop = model.predict_actions(images, text, decoder="autoregressive")
    assert torch.equal(bins_one_pass, bins_loop) and torch.equal(actions, actions_loop)
    assert len(torch.unique(bins_one_pass)) > 1  # not a degenerate constant output
    with pytest.raises(ValueError, match="no previous bins"):
        model(images, text, bins_one_pass)


def test_autoregressive_loop_agrees_with_teacher_forcing():
    """Greedy generation == argmax of ONE teacher-forced pass over the generated tokens."""
    model = _action_model("autoregressive", seed=2)
    images, text = model.config.fake_inputs(3, seed=6)
    bins, actions = model.predict_actions(images, text)
    with torch.no_grad():
        teacher_forced = model(images, text, bins).argmax(dim=-1)
    assert torch.equal(teacher_forced, bins)
    assert len(torch.unique(bins)) > 1
    with pytest.raises(ValueError, match="one pass"):
        model.predict_actions(images, text, decoder="parallel")
    with pytest.raises(ValueError, match="needs bins"):
        model(images, text)


def test_autoregressive_tokens_depend_only_on_earlier_tokens():
    model = _action_model("autoregressive", seed=3)
    images, text = model.config.fake_inputs(1)
    bins = torch.randint(0, 256, (1, 2, 7))
    changed = bins.clone()
    changed[0, 0, 3] = (bins[0, 0, 3] + 17) % 256  # token t = 3
    with torch.no_grad():
        a = model(images, text, bins).reshape(1, 14, 256)
        b = model(images, text, changed).reshape(1, 14, 256)
    assert torch.equal(a[:, :4], b[:, :4])  # tokens <= 3 do not see token 3's value
    assert not torch.allclose(a[:, 4], b[:, 4])  # token 4 does


def test_actions_decode_through_the_tokenizer_table():
    tok = _tokenizer()
    model = _action_model("parallel")
    bins, actions = model.predict_actions(*model.config.fake_inputs(2))
    np.testing.assert_array_equal(actions.numpy(), tok.decode(bins.numpy()))
    untabled = _model().replace_head_for_actions(tok)
    untabled.action_head.has_bin_centers = False
    with pytest.raises(RuntimeError, match="bin table"):
        untabled.predict_actions(*model.config.fake_inputs(1))


@pytest.mark.parametrize("decoder", ["parallel", "autoregressive"])
def test_losses_and_one_training_step(decoder):
    latent = _model()
    images, text = latent.config.fake_inputs(4)
    codes = torch.randint(0, 8, (4, 4))
    loss = latent_loss(latent(images, text), codes)
    assert abs(loss.item() - np.log(8)) < 0.5  # near uniform at init

    model = _action_model(decoder, num_bins=16)
    model.train()
    bins = torch.randint(0, 16, (4, 2, 7))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tf = bins if decoder == "autoregressive" else None
    first = action_loss(model(images, text, tf), bins)
    for _ in range(5):
        opt.zero_grad()
        loss = action_loss(model(images, text, tf), bins)
        loss.backward()
        opt.step()
    assert loss.item() < first.item()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("blocks.0."))
    mask = torch.tensor([[True, False]] * 4)
    with torch.no_grad():
        logits = model(images, text, tf)
        torch.testing.assert_close(action_loss(logits, bins, mask), action_loss(logits[:, :1], bins[:, :1]))


def test_bf16_autocast_keeps_the_mask_and_follows_fp32():
    """CPU bf16 autocast (--precision bf16): masked scores stay fp32 (a fp32-min fill does not fit
    bf16), the prefix still cannot see the queries, and the outputs follow fp32 to bf16 rounding."""
    model = _action_model()
    images, text = model.config.fake_inputs(4)
    state = torch.zeros(4, model.config.state_dim) if model.config.state_dim else None
    with torch.no_grad():
        full = model(images, text, state=state)  # (B, K, 7, nb)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(images, text, state=state)
    assert torch.isfinite(half).all()
    assert torch.nn.functional.cosine_similarity(half.float().flatten(), full.flatten(), dim=0) > 0.99
    P = model.config.prefix_len
    x = model.embed_prefix(images, text)  # (B, P, D)
    q = model.action_head.query_tokens(4, None)  # (B, T, D)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = model.blocks[0](torch.cat([x, q], dim=1), model.attn_blocked)[:, :P]
        b = model.blocks[0](torch.cat([x, torch.randn_like(q)], dim=1), model.attn_blocked)[:, :P]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
