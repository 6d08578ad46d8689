"""Does an exported graph compute what its reference computes? Random inputs only, never zeros.

The comparisons are numpy (so TensorRT-vs-ONNX-Runtime parity uses them too); the reference runs
(torch eager) import torch only when called.

Criteria (fp32), bins head: the decoded bins agree on >= 99.9% of the action dimensions, logits
within 1e-4 + 1e-5 x max|reference logit| (float32 rounding grows with the logits' scale: a trained
model's logits reach tens), text embeddings within 1e-4. Agreement is measured over `samples`
random observations, enough dimensions (64 x K x 7) that a single flipped argmax does not fail
the check by itself; a flip whose two logits differ by less than the tolerance is counted as a near tie in the report.

L1 head (continuous): the normalised predictions within 1e-4 + 1e-5 x max|reference|; the actions
within the same relative tolerance of each dimension's scale (its largest |reference action|);
the bins (each action's nearest bin centre) agree on >= 99.9% of the dimensions once the flips at
a bin boundary are set aside: a flip whose two actions are within the action tolerance is such a
near-boundary flip (the analogue of the bins head's near tie), reported but not held against the
graph. Models with a proprio input get random plausible states (lapa/action.py's fake_state).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from export.metadata import (
    ACTIONS_OUTPUT,
    ATTENTION_MASK,
    BINS_OUTPUT,
    IMAGE_INPUT,
    INPUT_IDS,
    LOGITS_OUTPUT,
    NORMALIZED_OUTPUT,
    STATE_INPUT,
    TEXT_EMB_INPUT,
    TEXT_EMB_OUTPUT,
    WRIST_IMAGE_INPUT,
    ExportError,
)

MIN_BINS_AGREE = 0.999
LOGITS_ATOL = 1e-4
LOGITS_RTOL = 1e-5  # of the largest reference logit
NORMALIZED_ATOL = 1e-4  # l1 head: normalised predictions (order 1), and actions relative to their scale
NORMALIZED_RTOL = 1e-5  # of the largest reference normalised prediction
REDUCED_PRECISION_ACTION_RTOL = 1e-2  # fp16 engines: a flip is at a bin boundary within 1% of the dimension's scale
EMBEDDING_ATOL = 1e-4
REDUCED_PRECISION_MIN_COSINE = 0.999  # TensorRT fp16 vs ONNX Runtime fp32

INSTRUCTIONS = (
    "pick up the red block",
    "push the blue block to the left",
    "put the red block on the green block and then move back to the start position",
    "go",
)


class ParityError(ExportError):
    """The exported graph does not reproduce its reference within the tolerances."""


@dataclass
class ParityReport:
    name: str
    samples: int
    max_abs_diff: float  # logits / normalised predictions (policy) or embedding (text encoder)
    cosine: float  # of the flattened logits / normalised predictions / embeddings, float64
    bins_agree: float | None = None
    max_abs_actions: float | None = None
    flips: int = 0
    near_tie_flips: int = 0  # bins head: near ties of two logits; l1 head: actions at a bin boundary
    head: str | None = None  # "bins" or "l1" for a policy report
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        parts = [f"{self.name}: {'ok' if self.passed else 'FAILED'} on {self.samples} random inputs"]
        if self.bins_agree is not None:
            near = "at bin boundaries" if self.head == "l1" else "near ties"
            parts.append(f"bins agree {100 * self.bins_agree:.3f}% "
                         f"({self.flips} flips, {self.near_tie_flips} {near})")
        parts.append(f"max |diff| {self.max_abs_diff:.2e}, cosine {self.cosine:.6f}")
        return ", ".join(parts) + ("" if self.passed else " -- " + "; ".join(self.failures))

    def raise_if_failed(self) -> None:
        if self.failures:
            raise ParityError(f"parity check failed: {self.summary()}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def compare_policy(
    name: str,
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    samples: int,
    min_agree: float = MIN_BINS_AGREE,
    logits_atol: float | None = LOGITS_ATOL,
    min_cosine: float | None = None,
) -> ParityReport:
    """Compare two runs' (actions, bins, logits); logits_atol None skips the absolute check (fp16).

    Runs of an l1 model (normalized_actions instead of logits) go to compare_regression, with
    logits_atol as its `atol` (the same 1e-4 default, NORMALIZED_ATOL).
    """
    if NORMALIZED_OUTPUT in ref:
        return compare_regression(name, ref, got, samples, min_agree=min_agree, atol=logits_atol,
                                  min_cosine=min_cosine)
    ref_bins, got_bins = ref[BINS_OUTPUT].astype(np.int64), got[BINS_OUTPUT].astype(np.int64)
    if ref_bins.shape != got_bins.shape:
        raise ParityError(f"{name}: bins shape {got_bins.shape}, expected {ref_bins.shape}")
    ref_logits, got_logits = ref[LOGITS_OUTPUT].astype(np.float64), got[LOGITS_OUTPUT].astype(np.float64)
    flips = ref_bins != got_bins  # (N, K, 7)
    # a flip is a near tie when the reference scores both bins within the tolerance
    ref_at_got = np.take_along_axis(ref_logits, got_bins[..., None], axis=-1)[..., 0]
    ref_at_ref = np.take_along_axis(ref_logits, ref_bins[..., None], axis=-1)[..., 0]
    near = flips & (ref_at_ref - ref_at_got <= (logits_atol or 1e-3))
    report = ParityReport(
        name=name,
        samples=samples,
        max_abs_diff=float(np.abs(ref_logits - got_logits).max()),
        cosine=_cosine(ref_logits, got_logits),
        bins_agree=float(1.0 - flips.mean()),
        max_abs_actions=float(np.abs(ref[ACTIONS_OUTPUT] - got[ACTIONS_OUTPUT]).max()),
        flips=int(flips.sum()),
        near_tie_flips=int(near.sum()),
        head="bins",
        thresholds={"min_bins_agree": min_agree},
    )
    if report.bins_agree < min_agree:
        report.failures.append(f"bins agree on {100 * report.bins_agree:.3f}% < {100 * min_agree:.1f}%")
    if logits_atol is not None:
        tolerance = logits_atol + LOGITS_RTOL * float(np.abs(ref_logits).max())
        report.thresholds["logits_atol"] = logits_atol
        report.thresholds["logits_tolerance"] = tolerance
        if report.max_abs_diff > tolerance:
            report.failures.append(f"logits differ by {report.max_abs_diff:.2e} > {tolerance:.2e} "
                                   f"({logits_atol:.0e} + {LOGITS_RTOL:.0e} x max |logit|)")
    return _check_cosine(report, min_cosine, "logits")


def compare_regression(
    name: str,
    ref: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    samples: int,
    min_agree: float = MIN_BINS_AGREE,
    atol: float | None = NORMALIZED_ATOL,
    min_cosine: float | None = None,
) -> ParityReport:
    """Compare two runs of an l1 model (actions, bins, normalized_actions); atol None skips the absolute
    checks (fp16: then the cosine of the normalised predictions and the bins decide)."""
    ref_n, got_n = ref[NORMALIZED_OUTPUT].astype(np.float64), got[NORMALIZED_OUTPUT].astype(np.float64)
    ref_a, got_a = ref[ACTIONS_OUTPUT].astype(np.float64), got[ACTIONS_OUTPUT].astype(np.float64)
    ref_bins, got_bins = ref[BINS_OUTPUT].astype(np.int64), got[BINS_OUTPUT].astype(np.int64)
    for what, r, g in (("normalized_actions", ref_n, got_n), ("actions", ref_a, got_a), ("bins", ref_bins, got_bins)):
        if r.shape != g.shape:
            raise ParityError(f"{name}: {what} shape {g.shape}, expected {r.shape}")
    # each action dimension's scale: metres, radians and the gripper's 0..1 differ by orders of magnitude
    scale = np.maximum(np.abs(ref_a).reshape(-1, ref_a.shape[-1]).max(axis=0), 1e-6)  # (7,)
    action_tol = (atol if atol is not None else REDUCED_PRECISION_ACTION_RTOL) * scale  # (7,), broadcasts
    action_diff = np.abs(ref_a - got_a)  # (N, K, 7)
    flips = ref_bins != got_bins
    near = flips & (action_diff <= action_tol)  # the two actions straddle a bin boundary, within tolerance
    report = ParityReport(
        name=name,
        samples=samples,
        max_abs_diff=float(np.abs(ref_n - got_n).max()),
        cosine=_cosine(ref_n, got_n),
        bins_agree=float(1.0 - flips.mean()),
        max_abs_actions=float(action_diff.max()),
        flips=int(flips.sum()),
        near_tie_flips=int(near.sum()),
        head="l1",
        thresholds={"min_bins_agree": min_agree},
    )
    agree_off_boundary = float(1.0 - (flips & ~near).mean())
    if agree_off_boundary < min_agree:
        report.failures.append(f"bins agree on {100 * agree_off_boundary:.3f}% away from bin boundaries "
                               f"< {100 * min_agree:.1f}%")
    if atol is not None:
        tolerance = atol + NORMALIZED_RTOL * float(np.abs(ref_n).max())
        report.thresholds["normalized_atol"] = atol
        report.thresholds["normalized_tolerance"] = tolerance
        if report.max_abs_diff > tolerance:
            report.failures.append(f"normalized actions differ by {report.max_abs_diff:.2e} > {tolerance:.2e}")
        worst = np.unravel_index(np.argmax(action_diff / action_tol), action_diff.shape)
        if action_diff[worst] > action_tol[worst[-1]]:
            report.failures.append(f"actions differ by {action_diff[worst]:.2e} in dimension {worst[-1]} > "
                                   f"{action_tol[worst[-1]]:.2e} ({atol:.0e} x its largest |action|)")
    return _check_cosine(report, min_cosine, "normalized actions")


def _check_cosine(report: ParityReport, min_cosine: float | None, what: str) -> ParityReport:
    """Add the reduced-precision check (cosine of the scores >= min_cosine) when one is asked for."""
    if min_cosine is not None:
        report.thresholds["min_cosine"] = min_cosine
        if report.cosine < min_cosine:
            report.failures.append(f"{what} cosine {report.cosine:.6f} < {min_cosine}")
    return report


def compare_embeddings(name: str, ref: np.ndarray, got: np.ndarray, samples: int,
                       atol: float = EMBEDDING_ATOL) -> ParityReport:
    if ref.shape != got.shape:
        raise ParityError(f"{name}: embedding shape {got.shape}, expected {ref.shape}")
    report = ParityReport(name=name, samples=samples, max_abs_diff=float(np.abs(ref - got).max()),
                          cosine=_cosine(ref, got), thresholds={"embedding_atol": atol})
    if report.max_abs_diff > atol:
        report.failures.append(f"embeddings differ by {report.max_abs_diff:.2e} > {atol:.0e}")
    return report


def run_session(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An ONNX Runtime session's outputs by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def policy_inputs(config: Any, samples: int, batch: int = 16, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Random policy.onnx feeds {image uint8 (b, H, W, 3)[, wrist_image (b, H, W, 3)], text_emb (b, D)
    [, state (b, 8)]} in batches of sizes 1, 3, then `batch`: dynamic batch exercised, in the graph's
    input order. `state` when config.state_dim, random (fake_state)."""
    from lapa.action import fake_state

    sizes, left = [], samples
    for size in (1, 3):
        if left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
    while left > 0:
        sizes.append(min(batch, left))
        left -= sizes[-1]
    for i, size in enumerate(sizes):
        images, text = config.fake_inputs(batch=size, seed=seed + i)  # (b[, V], H, W, 3)
        if getattr(config, "num_cameras", 1) > 1:
            feeds = {IMAGE_INPUT: images[:, 0].numpy(), WRIST_IMAGE_INPUT: images[:, 1].numpy()}
        else:
            feeds = {IMAGE_INPUT: images.numpy()}
        feeds[TEXT_EMB_INPUT] = text.numpy()
        if getattr(config, "state_dim", 0):
            dim = getattr(config, "state_input_dim", config.state_dim)  # 8, or 8 per state with a history
            feeds[STATE_INPUT] = fake_state(size, seed=seed + i, dim=dim)
        yield feeds


def _concat(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}


def policy_parity(model: Any, session: Any, samples: int = 64, batch: int = 16, seed: int = 0) -> ParityReport:
    """Torch eager VLA (+ decoding) vs the exported policy graph in an ORT session; random states for a
    model with a proprio input."""
    import torch

    from export.metadata import policy_io_names
    from export.onnx_export import policy_step

    step = policy_step(model).eval()
    _, outputs = policy_io_names(model.config.state_dim, model.config.action_output, model.config.cameras)
    refs, gots = [], []
    for feeds in policy_inputs(model.config, samples, batch, seed):
        with torch.no_grad():
            ref = step(*(torch.from_numpy(a) for a in feeds.values()))  # the graph's inputs in order
        refs.append({name: t.numpy() for name, t in zip(outputs, ref, strict=True)})
        gots.append(run_session(session, feeds))
    return compare_policy("policy.onnx vs torch", _concat(refs), _concat(gots), samples)


def random_token_batch(vocab_size: int, batch: int, seq: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (int64 (B, T)) with ragged padding: row 0 full, the others shorter."""
    ids = rng.integers(1000, vocab_size, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(2, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def text_parity(encoder: Any, session: Any, seed: int = 0) -> ParityReport:
    """Torch MiniLM vs the exported text encoder: real instructions plus random token batches of two lengths."""
    import torch

    rng = np.random.default_rng(seed)
    vocab = encoder.model.config.vocab_size
    tokens = getattr(encoder, "tokens", 0)  # the token form's graph takes exactly N tokens
    batches = [encoder.tokenize(list(INSTRUCTIONS)), random_token_batch(vocab, 5, tokens or 9, rng),
               random_token_batch(vocab, 2, tokens or 31, rng)]
    refs, gots, rows = [], [], 0
    for ids, mask in batches:
        with torch.no_grad():
            refs.append(encoder.graph(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        gots.append(run_session(session, {INPUT_IDS: ids, ATTENTION_MASK: mask})[TEXT_EMB_OUTPUT])
        rows += ids.shape[0]
    return compare_embeddings("text_encoder.onnx vs torch", np.concatenate(refs), np.concatenate(gots), rows)
