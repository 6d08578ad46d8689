"""Instruction encoder (all-MiniLM-L6-v2 in plain torch) and the instruction cache."""

import numpy as np
import pytest
import torch

from lapa.policy.text_encoder import InstructionCache, TextEncoder, TextEncoderError

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SENTENCES = ["pick up the red block", "Put the green cube on the blue plate, please!"]
# computed once with sentence-transformers 6.2.0 on the same package's model (normalised output)
REF_HEAD_0 = [-0.050873, 0.0067432, -0.0588294, 0.0367947, 0.0364434, 0.030038, 0.0894896, -0.0264868]
REF_TAIL_1 = [-0.0018561, 0.0403351, 0.0228248, 0.0095907]
REF_0_313 = -0.1632214
REF_COSINE = 0.3642513


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.load()


def test_matches_sentence_transformers(encoder):
    emb = encoder.encode(SENTENCES)
    assert emb.dtype == torch.float32 and emb.shape == (2, 384) and encoder.embedding_dim == 384
    np.testing.assert_allclose(emb[0, :8].numpy(), REF_HEAD_0, atol=2e-6)
    np.testing.assert_allclose(emb[1, -4:].numpy(), REF_TAIL_1, atol=2e-6)
    assert emb[0, 313].item() == pytest.approx(REF_0_313, abs=2e-6)
    assert float(emb[0] @ emb[1]) == pytest.approx(REF_COSINE, abs=1e-5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_related_instructions_are_closer(encoder):
    a, b, c, d = encoder.encode([
        "pick up the red block", "grab the red cube", "what is the weather in Paris tomorrow",
        "push the blue block to the left",
    ])
    assert float(a @ b) > 0.5
    assert float(a @ b) > float(a @ d) > float(a @ c)
    assert float(a @ c) < 0.2


def test_tokenize_pads_and_padding_does_not_change_the_embedding(encoder):
    ids, mask = encoder.tokenize(SENTENCES)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids[0, 0] == 101 and mask[0].sum() == 7 and mask[1].sum() == ids.shape[1]  # [CLS], pad to longest
    assert np.all(ids[0, mask[0] == 0] == 0)
    alone = encoder.encode(SENTENCES[:1])
    torch.testing.assert_close(alone[0], encoder.encode(SENTENCES)[0], atol=1e-6, rtol=0)


def test_edge_cases(encoder):
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("not a list")
    long = encoder.tokenize(["word " * 1000])[0]
    assert long.shape[1] == 256  # truncated like sentence-transformers' max_seq_length
    with pytest.raises(TextEncoderError, match="missing"):
        TextEncoder.load("/nonexistent")


class CountingEncoder:
    embedding_dim = 4

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return torch.tensor([[len(t), 1.0, 2.0, 3.0] for t in texts])


def test_cache_encodes_each_instruction_once():
    enc = CountingEncoder()
    cache = InstructionCache(enc, max_size=2)
    first = cache.get("pick up the red block")
    assert first.shape == (4,) and first[0] == len("pick up the red block")
    cache.get("pick up the red block")
    assert len(enc.calls) == 1 and cache.hits == 1 and cache.misses == 1
    out = cache.get_batch(["a", "a", "pick up the red block"])  # one miss, encoded once in a batch
    assert out.shape == (3, 4) and enc.calls[-1] == ["a"] and len(enc.calls) == 2
    out[0, 0] = 99.0  # a caller's edit never reaches the cache
    assert cache.get("a")[0] == 1.0


def test_cache_evicts_least_recently_used():
    enc = CountingEncoder()
    cache = InstructionCache(enc, max_size=2)
    cache.get("x")
    cache.get("y")
    cache.get("x")  # y is now the oldest
    cache.get("z")
    assert "x" in cache and "z" in cache and "y" not in cache and len(cache) == 2
    cache.get("y")
    assert enc.calls[-1] == ["y"]
