"""`lapa export onnx`: a finetuned VLA checkpoint -> an export directory (see export/metadata.py).

Two graphs, both with a dynamic batch:
- policy.onnx, the per-step graph. Everything a backend would otherwise have to re-implement is
  inside it: uint8 -> [-1, 1] normalisation, the proprio state's features (a model with
  `state_dim` 8 takes a third input `state` float32 (B, 8)), the VLA's one parallel pass, and the
  decoding into robot units (metres, radians, gripper 0/1): a backend feeds bytes and reads actions.
  Bins head: argmax over the bins and the bin-centre lookup (the centres are the action
  tokenizer's, so that lookup *is* the un-normalisation); outputs actions, bins, logits.
  L1 head: clip to [-1, 1] and un-normalise with the tokenizer's q01/q99; outputs actions, bins
  (the nearest bin centre of each action value, the token view), normalized_actions (the head's
  raw output, before clipping).
- text_encoder.onnx, MiniLM (input_ids, attention_mask) -> unit embedding with dynamic batch and
  sequence, run once per new instruction; its `tokenizer.json` is copied next to it. A model with
  the token form of the instruction (text_tokens N) gets MiniLM's token features instead, (B, N * D)
  from exactly N tokens.

Only the parallel decoder is exported. An autoregressive checkpoint is refused: its chunk takes
K*7 full passes with a Python loop around them, which belongs in a runtime loop over a step graph
with a KV cache, not in one graph; serve such a model with the torch backend.

Exporters: "dynamo" (torch.export, the default; its graph ran about 3x faster in ONNX Runtime than
the legacy one on this CPU, see bench/model.py) and "legacy" (TorchScript tracing: seconds instead
of tens of seconds to export, deprecated by PyTorch). Both keep batch and sequence dynamic; the
parity check at export time runs several batch sizes and sequence lengths to prove it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export import graph_check, parity
from export.metadata import (
    ATTENTION_MASK,
    BATCH_DIM,
    FORMAT_VERSION,
    INPUT_IDS,
    METADATA_FILE,
    NORMALIZED_OUTPUT,
    POLICY_ONNX,
    STATE_INPUT,
    TEXT_EMB_OUTPUT,
    TEXT_ONNX,
    TOKENIZER_FILE,
    ExportError,
    file_sha256,
    policy_io_names,
    write_metadata,
)
from lapa.action import ACTION_NAMES, STATE_NAMES, fake_state
from lapa.checkpoint import MODEL_FILE, CheckpointError
from lapa.policy.action_tokenizer import ActionTokenizer
from lapa.policy.checkpoint_io import checkpoint_extra, load_vla, read_vla_config
from lapa.policy.config import VLAConfig
from lapa.policy.model import VLA, RegressionHead
from lapa.policy.text_encoder import TextEncoder, instruction_encoder

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 19  # what GR00T's TensorRT path uses; TensorRT 10's parser reads it
MAX_BATCH = 1024  # upper bound of the dynamic batch dimension (TensorRT's profile picks its own)


class PolicyStep(nn.Module):
    """image uint8 (B, H, W, 3) + text_emb (B, D) [+ state (B, 8)] -> (actions (B, K, 7), bins (B, K, 7), score).

    score: logits (B, K, 7, nb) for the bins head, normalized_actions (B, K, 7) for the l1 head.
    A model with state_dim 8 must get `state`: it was finetuned with it (None would be its "no
    state" token, a latent-pretraining input).
    """

    def __init__(self, model: VLA) -> None:
        super().__init__()
        if model.action_head is None:
            raise ValueError("PolicyStep needs an action-head VLA")
        self.model = model

    def forward(self, image: Tensor, text_emb: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        return self.outputs(image, text_emb, state)

    def outputs(self, images: Tensor, text_emb: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        head = self.model.action_head
        out = self.model(images, text_emb, state=state)  # normalisation inside embed_prefix
        if isinstance(head, RegressionHead):
            # a static (K, 7) for the graph's shape inference (a slice of the query outputs would leave
            # K symbolic, and TensorRT's buffers need every dimension but the batch fixed)
            out = out.reshape(-1, head.chunk_size, head.action_dim)  # (B, K, 7)
            actions = head.to_actions(out)  # (B, K, 7) clipped, un-normalised: robot units
            return actions, head.nearest_bins(actions), out  # bins (B, K, 7) int64, out (B, K, 7)
        bins = out.argmax(dim=-1)  # (B, K, 7) int64 from logits (B, K, 7, nb)
        actions = head.decode(bins)  # (B, K, 7) bin centres in robot units
        return actions, bins, out


class WristPolicyStep(PolicyStep):
    """PolicyStep of a model with cameras [scene, wrist]: the two images are separate graph inputs
    (image, wrist_image: uint8 (B, H, W, 3) each), stacked inside the graph."""

    def forward(self, image: Tensor, wrist_image: Tensor, text_emb: Tensor,
                state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        return self.outputs(torch.stack([image, wrist_image], dim=1), text_emb, state)  # (B, 2, H, W, 3)


def policy_step(model: VLA) -> PolicyStep:
    """The per-step module whose arguments are policy.onnx's inputs, in policy_io_names' order."""
    return WristPolicyStep(model) if "wrist" in model.config.cameras else PolicyStep(model)


def check_exportable(directory: Path, config: VLAConfig, tokenizer: ActionTokenizer | None) -> None:
    """CheckpointError / ExportError with the reason when a checkpoint cannot become a policy graph."""
    if config.head != "action" or tokenizer is None:
        raise CheckpointError(f"{directory}: a latent-pretraining VLA (no action head): export a finetuned "
                              "checkpoint (stage 3, `head: action`)")
    if config.decoder != "parallel":
        raise ExportError(f"{directory}: an autoregressive-decoder checkpoint needs K*7 = "
                          f"{config.num_action_tokens} passes per chunk with a Python loop; export supports the "
                          "parallel decoder only. Serve this model with the torch backend, or finetune with "
                          "decoder='parallel'")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters warn a lot about things that do not concern us (deprecation, torchvision ops)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, tuple[str, int, int]]],
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
) -> None:
    """Export `module(*args)` to one self-contained .onnx file.

    dynamic: input name -> {axis: (symbol, min, max)}; axes sharing a symbol share a size.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    module = module.eval()
    with _quiet_exporter(), torch.no_grad():
        try:
            if exporter == "dynamo":
                symbols: dict[str, Any] = {}
                shapes = []
                for name in input_names:
                    axes = {}
                    for axis, (sym, lo, hi) in dynamic.get(name, {}).items():
                        axes[axis] = symbols.setdefault(sym, torch.export.Dim(sym, min=lo, max=hi))
                    shapes.append(axes or None)
                program = torch.onnx.export(module, args, dynamo=True, input_names=input_names,
                                            output_names=output_names, dynamic_shapes=tuple(shapes),
                                            opset_version=opset, optimize=True, verbose=False)
                program.save(str(path), external_data=False)
            else:
                axes = {name: {axis: sym for axis, (sym, _, _) in dims.items()} for name, dims in dynamic.items()}
                axes.update({name: {0: BATCH_DIM} for name in output_names})  # name the outputs' batch too
                torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                                  output_names=output_names, dynamic_axes=axes, opset_version=opset,
                                  do_constant_folding=True)
        except ExportError:
            raise
        except Exception as err:  # the exporters raise many types; name the graph and the exporter
            raise ExportError(f"{path.name}: the {exporter} exporter failed: {type(err).__name__}: {err}") from err


def export_policy_graph(model: VLA, path: Path, exporter: str = "dynamo", opset: int = DEFAULT_OPSET) -> None:
    c = model.config
    images, text = c.fake_inputs(batch=2, seed=0)  # batch 2: dynamo specialises a batch of 1
    # one graph input per camera: (B, H, W, 3) each
    args: tuple[Tensor, ...] = (*(images.unbind(1) if c.num_cameras > 1 else (images,)), text)
    if c.state_dim:
        args += (torch.from_numpy(fake_state(2, seed=0, dim=c.state_input_dim)),)
    inputs, outputs = policy_io_names(c.state_dim, c.action_output, c.cameras)
    batch = (BATCH_DIM, 1, MAX_BATCH)
    export_graph(policy_step(model), args, path, inputs, outputs, {name: {0: batch} for name in inputs},
                 exporter, opset)


def export_text_graph(encoder: TextEncoder, path: Path, exporter: str = "dynamo", opset: int = DEFAULT_OPSET) -> None:
    """Sentence form: dynamic batch and sequence. Token form (encoder.tokens N): the sequence is
    fixed at N (the tokenizer pads and truncates to N), the output is (B, N * D)."""
    ids, mask = encoder.tokenize(["pick up the red block", "push the blue block to the left of the green one"])
    batch, seq = (BATCH_DIM, 1, MAX_BATCH), ("seq", 2, encoder.model.config.max_seq_length)
    axes = {0: batch} if encoder.tokens else {0: batch, 1: seq}
    export_graph(encoder.graph, (torch.from_numpy(ids), torch.from_numpy(mask)), path, [INPUT_IDS, ATTENTION_MASK],
                 [TEXT_EMB_OUTPUT], {INPUT_IDS: axes, ATTENTION_MASK: axes}, exporter, opset)


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own exception types are not importable in a stable place
        raise ExportError(f"{path}: ONNX Runtime cannot load the exported graph: {err}") from err


def _tool_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {"torch": torch.__version__}
    for dist in ("onnx", "onnxruntime", "onnxscript", "polygraphy", "onnx-graphsurgeon", "tokenizers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _prepare_out(out: Path) -> Path:
    """A fresh temporary sibling of `out`; refuse to replace a directory that is not an export."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / METADATA_FILE).is_file():
            raise ExportError(f"{out} exists, is not empty and is not an export directory: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def _swap_in(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp made it private
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    text_encoder_dir: str | os.PathLike | None = None,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    parity_samples: int = 64,
    threads: int | None = None,
    sanitize: bool = True,
    log=print,
) -> dict[str, Any]:
    """Export, check (graph, fp32 softmax, parity against torch) and write `out`; returns metadata.json's dict.

    Everything is written to a temporary sibling directory and swapped in at the end, so a failed
    export (e.g. parity) never leaves a half-written export directory under `out`.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if threads is not None:
        torch.set_num_threads(threads)
    _, config, tokenizer = read_vla_config(checkpoint)  # CheckpointError if not a VLA
    check_exportable(checkpoint, config, tokenizer)
    model, config, tokenizer = load_vla(checkpoint)
    assert tokenizer is not None
    encoder = instruction_encoder(TextEncoder.load(text_encoder_dir), config.text_tokens)
    if encoder.embedding_dim != config.text_input_dim:
        raise ExportError(f"{checkpoint} takes {config.text_input_dim}-float instruction embeddings, the text "
                          f"encoder makes {encoder.embedding_dim}-float ones")
    tmp = _prepare_out(out)
    try:
        started = time.perf_counter()
        log(f"[export] {POLICY_ONNX} ({exporter}, opset {opset})")
        export_policy_graph(model, tmp / POLICY_ONNX, exporter, opset)
        log(f"[export] {TEXT_ONNX} ({exporter}, opset {opset})")
        export_text_graph(encoder, tmp / TEXT_ONNX, exporter, opset)
        export_seconds = time.perf_counter() - started

        checks = {}
        for name in (POLICY_ONNX, TEXT_ONNX):
            log(f"[export] checking {name} (onnx checker{', polygraphy constant folding' if sanitize else ''}, "
                "fp32 softmax)")
            checks[name] = graph_check.check_graph(tmp / name, fold=sanitize).to_dict()

        log(f"[export] parity against torch on {parity_samples} random inputs")
        policy_report = parity.policy_parity(model, _session(tmp / POLICY_ONNX, threads), samples=parity_samples)
        text_report = parity.text_parity(encoder, _session(tmp / TEXT_ONNX, threads))
        for report in (policy_report, text_report):
            log(f"[export] {report.summary()}")
            report.raise_if_failed()

        assert encoder.model_dir is not None
        shutil.copyfile(encoder.model_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        doc = _metadata(checkpoint, config, tokenizer, encoder, exporter, opset, checks,
                        {"policy": policy_report.to_dict(), "text_encoder": text_report.to_dict()}, tmp)
        doc["export_seconds"] = round(export_seconds, 2)
        write_metadata(tmp, doc)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"[export] wrote {out}")
    return doc


def _metadata(
    checkpoint: Path,
    config: VLAConfig,
    tokenizer: ActionTokenizer,
    encoder: TextEncoder,
    exporter: str,
    opset: int,
    checks: dict[str, Any],
    parity_reports: dict[str, Any],
    directory: Path,
) -> dict[str, Any]:
    c = config
    mc = encoder.model.config
    pad_id = encoder.tokenizer.token_to_id("[PAD]")
    inputs, outputs = policy_io_names(c.state_dim, c.action_output, c.cameras)
    if c.action_output == "l1":
        decoding = (f"inside the graph: the head's normalised output ({NORMALIZED_OUTPUT}) clipped to [-1, 1], then "
                    "x * (q99 - q01) / 2 + (q99 + q01) / 2 per motion dimension (action_statistics), gripper "
                    "x * 0.5 + 0.5 (continuous in [0, 1]: >= 0.5 is open); bins: each action's nearest bin centre")
    else:
        decoding = ("inside the graph: argmax over the bins, then the bin's centre in robot units "
                    "(per-dimension quantile bins; gripper: bin >= num_bins/2 -> 1.0)")
    return {
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "image_size": [c.image_size, c.image_size],
        "image_format": "uint8 RGB (B, H, W, 3); normalised inside the graph: (x / 255 - 0.5) / 0.5",
        "cameras": list(c.cameras),
        "chunk_size": c.chunk_size,
        "action_dim": c.action_dim,
        "action_names": list(ACTION_NAMES),
        "num_bins": c.num_bins,
        "control_hz": float(c.control_hz),
        "decoder": c.decoder,
        "action_output": c.action_output,
        "action_decoding": decoding,
        "state_dim": c.state_input_dim,
        "state_history": list(c.state_history),
        "state_input": STATE_INPUT if c.state_dim else None,
        "state_names": list(STATE_NAMES) if c.state_dim else [],
        "policy_inputs": inputs,
        "policy_outputs": outputs,
        "action_statistics": {k: list(v) for k, v in tokenizer.stats.items()},
        "opset": opset,
        "exporter": exporter,
        "graphs": {name: check["io"] for name, check in checks.items()},
        "text_encoder": {
            "name": encoder.name,
            "source": str(encoder.model_dir),
            "embedding_dim": encoder.embedding_dim,
            "max_seq_length": encoder.tokens or mc.max_seq_length,
            # 0: one sentence vector, pad to the longest; N: token features, pad and truncate to exactly N
            "tokens": encoder.tokens,
            "tokenizer": TOKENIZER_FILE,
            "pad_id": 0 if pad_id is None else int(pad_id),
            "pad_token": "[PAD]",
        },
        "checkpoint": {
            "path": str(checkpoint.resolve()),
            "sha256": file_sha256(checkpoint / MODEL_FILE),
            "vla": c.to_dict(),
            "extra": checkpoint_extra(checkpoint),
        },
        "files": {name: file_sha256(directory / name) for name in (POLICY_ONNX, TEXT_ONNX, TOKENIZER_FILE)},
        "tools": _tool_versions(),
        "graph_check": {name: {k: v for k, v in check.items() if k != "io"} for name, check in checks.items()},
        "parity": parity_reports,
    }

