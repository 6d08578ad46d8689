"""The token form of the instruction (VLAConfig.text_tokens): MiniLM's token features instead of one
pooled sentence vector, so word order ("put the red block on the blue block" vs its role swap)
reaches the policy, through training, the torch policy, the ONNX export and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vla_fakes import FakeEncoder, fit_tokenizer

from lapa.action import fake_state
from lapa.policy.checkpoint_io import load_vla
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA
from lapa.policy.text_encoder import TextEncoder, TextEncoderError, instruction_encoder
from lapa.policy.torch_policy import TorchPolicy
from lapa.policy.train import TrainOptions, finetune_actions
from lapa.sim.record import ExpertOptions, record_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PUT = "put the yellow block on the blue block"
SWAPPED = "put the blue block on the yellow block"
SMALL = dict(image_size=32, patch_size=8, dim=32, depth=1, heads=2, chunk_size=2, num_bins=16, state_dim=8)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.load()


def test_token_features_are_padded_rows_whose_mean_is_the_sentence_vector(minilm):
    tokens = minilm.for_tokens(24)
    assert tokens.embedding_dim == 24 * 384 and tokens.token_dim == 384 and tokens.tokens == 24
    rows = tokens.encode([PUT, "reach the red block"]).reshape(2, 24, 384)  # (B, N, D)
    real = rows.abs().sum(dim=-1) > 0  # (B, N)
    assert real.sum(dim=1).tolist() == [10, 6]  # [CLS] + words + [SEP], the rest zero padding
    sentence = torch.nn.functional.normalize(rows.sum(dim=1) / real.sum(dim=1, keepdim=True), dim=-1)
    torch.testing.assert_close(sentence, minilm.encode([PUT, "reach the red block"]), atol=1e-6, rtol=0)
    assert tokens.tokenize(["word " * 100])[0].shape == (1, 24)  # truncated to N
    assert tokens.for_tokens(0).encode([PUT]).shape == (1, 384)
    assert instruction_encoder(minilm, 0) is minilm
    with pytest.raises(TextEncoderError, match="only sentence vectors"):
        instruction_encoder(FakeEncoder(), 8)


def test_the_token_form_separates_a_role_swap_the_sentence_vector_blurs(minilm):
    sentence = minilm.encode([PUT, SWAPPED])
    assert float(sentence[0] @ sentence[1]) > 0.99  # the mean-pooled vectors barely differ
    words = minilm.for_tokens(24).encode([PUT, SWAPPED]).reshape(2, 24, 384)
    colour_slot = 3  # [CLS] put the <colour>: the block to lift
    a, b = words[0, colour_slot], words[1, colour_slot]
    assert float(a @ b / (a.norm() * b.norm())) < 0.9  # the word in the lifted block's slot differs


def test_a_model_given_word_tokens_keeps_the_trunk_and_reads_word_order():
    torch.manual_seed(0)
    model = VLA(VLAConfig.preset("tabletop", head="action", **SMALL), fit_tokenizer(num_bins=16)).eval()
    words = model.with_text_tokens(6).eval()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(words.state_dict()[name], value)
    assert words.config.prefix_len == model.config.prefix_len + 6
    assert words.config.text_input_dim == 6 * model.config.text_dim
    images, text = words.config.fake_inputs(2)  # text (2, 6 * 384), the last two rows padding
    rows = text.reshape(2, 6, -1)
    assert (rows[:, 4:] == 0).all() and (rows[:, :4].norm(dim=-1) > 0).all()
    state = torch.from_numpy(fake_state(2))
    swapped = rows[:, [1, 0, 2, 3, 4, 5]].reshape(2, -1)  # the same words, another order: same mean
    with torch.no_grad():
        out = words(images, text, state=state)
        assert not torch.allclose(out, words(images, swapped, state=state)), "word order reaches the output"
        with pytest.raises(ValueError, match=r"text_emb must be \(B, 2304\)"):
            words(images, text[:, :384], state=state)
    with pytest.raises(ValueError, match="text_tokens"):
        VLAConfig.preset("tabletop", text_tokens=-1)
    assert VLAConfig.from_dict(words.config.to_dict()).text_tokens == 6


def test_word_pool_starts_as_the_token_model_and_then_films_the_words_into_the_image_encoder():
    torch.manual_seed(0)
    tokens = VLA(VLAConfig.preset("tabletop", head="action", text_tokens=6, **SMALL), fit_tokenizer(num_bins=16))
    pooled = tokens.with_text_tokens(6, pool=2).eval()
    tokens.eval()
    images, text = pooled.config.fake_inputs(2)
    state = torch.from_numpy(fake_state(2))
    rows = text.reshape(2, 6, -1).clone()
    shift = torch.randn(rows.shape[-1]) * 0.3
    rows[:, 0] += shift
    rows[:, 1] -= shift  # other words, the same mean: the same sentence vector
    same_sentence = rows.reshape(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(pooled(images, text, state=state), tokens(images, text, state=state))
        for film in pooled.conv_encoder.films:
            torch.nn.init.normal_(film.pool_proj.weight, std=0.5)  # as if trained
        pooled.word_pool.queries.normal_(std=3.0)
        image_tokens = pooled.embed_prefix(images, text, state)[:, 1 + 6 + 1:]  # the keypoint and patch tokens
        other = pooled.embed_prefix(images, same_sentence, state)[:, 1 + 6 + 1:]
    assert not torch.allclose(image_tokens, other), "the words, not only their mean, reach the image encoder"
    with pytest.raises(ValueError, match="text_pool"):
        VLAConfig.preset("tabletop", text_pool=2)  # needs the token form


@pytest.fixture(scope="module")
def small_minilm(tmp_path_factory):
    from bench.random_models import random_text_encoder

    return TextEncoder.load(random_text_encoder(tmp_path_factory.mktemp("text") / "minilm", hidden=32))


@pytest.fixture(scope="module")
def token_policy(tmp_path_factory, small_minilm):
    """A small model finetuned (1 step) from a sentence-form init into the token form."""
    root = tmp_path_factory.mktemp("tokens")
    record_dataset("put", 2, root / "robot", seed=5, image_size=32, progress=False,
                   expert=ExpertOptions(noise_m=0.0, until_done=True))
    opts = TrainOptions(steps=1, batch_size=2, ckpt_every=1, log_every=1, progress=False)
    config = VLAConfig.preset("tabletop", **SMALL)
    base = finetune_actions("scratch", [root / "robot"], root / "a", config=config, opts=opts, encoder=small_minilm)
    run = finetune_actions(base.checkpoint, [root / "robot"], root / "b", text_tokens=8, text_pool=2, opts=opts,
                           encoder=small_minilm)
    return run.checkpoint


def test_finetune_turns_a_sentence_model_into_the_token_form_and_the_policy_runs_it(token_policy, small_minilm):
    _, config, _ = load_vla(token_policy)
    assert config.text_tokens == 8 and config.text_pool == 2 and config.text_dim == 32
    policy = TorchPolicy(token_policy, text_encoder=small_minilm, num_threads=1)
    assert policy.metadata["text_tokens"] == 8
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    obs = {"image": image, "instruction": PUT, "state": fake_state(1)[0]}
    assert policy.infer(obs)["actions"].shape == (2, 7)
    assert policy.instructions.get(PUT).shape == (8 * 32,)


def test_export_runs_the_token_form_in_onnx_runtime(token_policy, small_minilm, tmp_path):
    from export.onnx_export import export_onnx
    from export.ort_policy import OrtPolicy

    doc = export_onnx(token_policy, tmp_path / "out", text_encoder_dir=small_minilm.model_dir, exporter="legacy",
                      parity_samples=8, log=lambda _m: None)
    assert doc["text_encoder"]["tokens"] == 8 and doc["text_encoder"]["embedding_dim"] == 8 * 32
    assert doc["parity"]["policy"]["passed"] and doc["parity"]["text_encoder"]["passed"]
    ort = OrtPolicy(tmp_path / "out", threads=1)
    torch_policy = TorchPolicy(token_policy, text_encoder=small_minilm, num_threads=1)
    np.testing.assert_allclose(ort.instructions.get(PUT), torch_policy.instructions.get(PUT).numpy(), atol=1e-5)
    assert np.abs(ort.instructions.get(PUT) - ort.instructions.get(SWAPPED)).max() > 1e-3
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    obs = {"image": image, "instruction": PUT, "state": fake_state(1)[0]}
    assert ort.infer(obs)["actions"].shape == (2, 7)


def test_word_dropout_turns_whole_word_rows_into_padding_and_keeps_one():
    from lapa.policy.datasets import drop_words

    N, dim = 6, 4
    feats = torch.zeros(300, N, dim)
    feats[:, :4] = torch.randn(300, 4, dim)  # 4 words, 2 padding rows
    dropped = drop_words(feats.reshape(300, -1), N, 0.5, np.random.default_rng(0)).reshape(300, N, dim)
    kept_rows = dropped.abs().sum(-1) > 0  # (300, N)
    assert not kept_rows[:, 4:].any()  # padding stays padding
    assert kept_rows.sum(1).min() >= 1  # every sample keeps a word
    assert 0.4 < 1 - kept_rows[:, :4].float().mean() < 0.6  # about half the words are dropped
    assert torch.equal(dropped[kept_rows], feats[kept_rows])  # kept rows are untouched
    assert torch.equal(drop_words(feats.reshape(300, -1), N, 0.0, np.random.default_rng(0)), feats.reshape(300, -1))
    with pytest.raises(ValueError, match="word_dropout"):
        TrainOptions(word_dropout=1.0)


def test_word_noise_moves_real_word_rows_by_the_stated_share_of_their_norm():
    from lapa.policy.datasets import jitter_words

    N, dim = 6, 384
    feats = torch.zeros(200, N, dim)
    feats[:, :4] = 8.0 * torch.nn.functional.normalize(torch.randn(200, 4, dim), dim=-1)  # 4 words of norm 8
    noisy = jitter_words(feats.reshape(200, -1), N, 0.4, np.random.default_rng(0)).reshape(200, N, dim)
    assert torch.equal(noisy[:, 4:], feats[:, 4:])  # padding stays padding
    moved = (noisy[:, :4] - feats[:, :4]).norm(dim=-1) / 8.0  # (200, 4) noise norm / word norm
    assert moved.mean().item() == pytest.approx(0.4, rel=0.05)
    cos = torch.nn.functional.cosine_similarity(noisy[:, :4], feats[:, :4], dim=-1)
    assert 0.88 < cos.mean().item() < 0.96  # about the move of a colour word in a held-out wording
    assert torch.equal(jitter_words(feats.reshape(200, -1), N, 0.0, np.random.default_rng(0)), feats.reshape(200, -1))
    with pytest.raises(ValueError, match="word_noise"):
        TrainOptions(word_noise=-0.1)


@pytest.mark.parametrize("tokens", [0, 6])
def test_sentence_noise_moves_only_the_sentence_vector_and_only_in_training(tokens):
    torch.manual_seed(0)
    model = VLA(VLAConfig.preset("tabletop", **SMALL, text_tokens=tokens, text_pool=2 if tokens else 0))
    dim = model.config.text_dim
    feats = torch.zeros(400, max(tokens, 1), dim)
    feats[:, :4 if tokens else 1] = torch.randn(400, 4 if tokens else 1, dim)
    if not tokens:
        feats = torch.nn.functional.normalize(feats, dim=-1)  # the sentence form: unit vectors
    text = feats.reshape(400, -1)
    model.eval()
    clean, words, pooled = model._instruction(text)
    model.sentence_noise = 1.0
    assert torch.equal(model._instruction(text)[0], clean), "no noise outside training"
    model.train()
    noisy, noisy_words, noisy_pooled = model._instruction(text)
    cos = torch.nn.functional.cosine_similarity(noisy, clean, dim=-1)  # (400,)
    assert 0.65 < cos.mean().item() < 0.76  # noise as long as the vector: cosine about 1/sqrt(2)
    if tokens:
        assert torch.equal(noisy_words, words) and torch.equal(noisy_pooled, pooled)
    with pytest.raises(ValueError, match="sentence_noise"):
        TrainOptions(sentence_noise=-1.0)
