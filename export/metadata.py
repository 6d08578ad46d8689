"""The export directory's contract: file names, `metadata.json`, and the checks a runtime makes on load.

An export directory holds

    policy.onnx         per-step graph: image uint8 (B, H, W, 3) [+ wrist_image uint8 (B, H, W, 3),
                        models with cameras [scene, wrist]] + text_emb float32 (B, D)
                        [+ state float32 (B, 8), models with a proprio input (state_dim 8)]
                        -> actions float32 (B, K, 7), bins int64 (B, K, 7), then by action head:
                           "bins": logits float32 (B, K, 7, nb)
                           "l1":   normalized_actions float32 (B, K, 7) (the head's raw output)
    text_encoder.onnx   input_ids, attention_mask int64 (B, T) -> text_emb float32 (B, D); a model
                        with the token form (metadata text_encoder.tokens N > 0) takes exactly
                        T = N tokens and gives their features, D = N * 384 (zero rows = padding)
    tokenizer.json      the text encoder's tokenizer (the `tokenizers` library reads it, no torch)
    metadata.json       everything a backend needs to feed bytes and read actions (below)
    policy.plan         optional: a TensorRT engine built from policy.onnx on the target GPU

Nothing here imports torch or onnx: the ONNX Runtime backend reads this module on machines that
have neither.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapa.errors import UserError
from lapa.file_hash import file_sha256
from lapa.state_history import state_input_dim

FORMAT_VERSION = 1
POLICY_ONNX = "policy.onnx"
INT8_ONNX = "policy_int8.onnx"  # optional: static int8 copy of policy.onnx (export/quantize.py)
TEXT_ONNX = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"
ENGINE_FILE = "policy.plan"

# graph I/O names (the contract between the exporter and every runtime)
BATCH_DIM = "batch"  # the graphs' symbolic batch dimension (export/onnx_export.py)
IMAGE_INPUT = "image"
WRIST_IMAGE_INPUT = "wrist_image"  # uint8 (B, H, W, 3): the hand camera, only for cameras [scene, wrist]
CAMERA_SETS = (("scene",), ("scene", "wrist"))
TEXT_EMB_INPUT = "text_emb"
STATE_INPUT = "state"  # float32 (B, 8), lapa/action.py's STATE_NAMES; only when state_dim is 8
ACTIONS_OUTPUT = "actions"
BINS_OUTPUT = "bins"
LOGITS_OUTPUT = "logits"  # bins head: (B, K, 7, nb)
NORMALIZED_OUTPUT = "normalized_actions"  # l1 head: (B, K, 7), each dimension's [q01, q99] -> [-1, 1]
ACTION_OUTPUTS = ("bins", "l1")
STATE_DIMS = (0, 8)
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
# not "embedding": the dynamo exporter already names an internal value so (aten::embedding) and the
# duplicate makes an invalid model
TEXT_EMB_OUTPUT = "text_emb"


class ExportError(UserError):
    """An export or an export directory that cannot be used; the message names the file and the fix."""


def policy_io_names(state_dim: int, action_output: str,
                    cameras: tuple[str, ...] | list[str] = ("scene",)) -> tuple[list[str], list[str]]:
    """(input names, output names) of policy.onnx for a model with this state input, action head and cameras."""
    images = [IMAGE_INPUT] + ([WRIST_IMAGE_INPUT] if "wrist" in cameras else [])
    inputs = images + [TEXT_EMB_INPUT] + ([STATE_INPUT] if state_dim else [])
    score = NORMALIZED_OUTPUT if action_output == "l1" else LOGITS_OUTPUT
    return inputs, [ACTIONS_OUTPUT, BINS_OUTPUT, score]


@dataclass(frozen=True)
class ExportMetadata:
    """The validated fields of metadata.json that runtimes use (the rest stays in `raw`)."""

    image_size: tuple[int, int]
    chunk_size: int
    action_dim: int
    num_bins: int
    text_dim: int
    control_hz: float
    max_seq_length: int
    model_hash: str
    files: dict[str, str]  # file name -> sha256
    raw: dict[str, Any]
    state_dim: int = 0  # 8 (or 8 per state with a state history): policy.onnx takes `state` (B, state_dim); 0: none
    action_output: str = "bins"  # "bins" (logits output) or "l1" (normalized_actions output)
    cameras: tuple[str, ...] = ("scene",)  # ("scene", "wrist"): policy.onnx also takes `wrist_image`

    @property
    def input_names(self) -> list[str]:
        return policy_io_names(self.state_dim, self.action_output, self.cameras)[0]

    @property
    def output_names(self) -> list[str]:
        return policy_io_names(self.state_dim, self.action_output, self.cameras)[1]

    @property
    def has_wrist_camera(self) -> bool:
        return "wrist" in self.cameras

    @property
    def score_output(self) -> str:
        """The third output: the logits (bins head) or the normalised predictions (l1 head)."""
        return self.output_names[2]

    def runtime_metadata(self, backend: str) -> dict[str, Any]:
        """The Policy.metadata dict (same keys as the torch backend's)."""
        r = self.raw
        return {
            "backend": backend,
            "image_size": list(self.image_size),
            "chunk_size": self.chunk_size,
            "action_dim": self.action_dim,
            "action_names": list(r.get("action_names", [])),
            "control_hz": self.control_hz,
            "model_hash": self.model_hash,
            "decoder": r.get("decoder", "parallel"),
            "num_bins": self.num_bins,
            "state_dim": self.state_dim,
            "state_history": list(r.get("state_history", [])),
            "cameras": list(self.cameras),
            "action_output": self.action_output,
            "text_encoder": r.get("text_encoder", {}).get("name", ""),
            "opset": r.get("opset"),
        }


def write_metadata(directory: Path, doc: dict[str, Any]) -> Path:
    path = Path(directory) / METADATA_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_metadata(directory: str | os.PathLike, verify_hashes: bool = True) -> ExportMetadata:
    """Parse and validate DIR/metadata.json; ExportError naming the problem otherwise.

    verify_hashes: check each listed file's sha256, so a graph swapped or truncated after export
    is refused instead of silently served with the wrong metadata.
    """
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not directory.is_dir():
        raise ExportError(f"{directory}: export directory not found")
    if not path.is_file():
        raise ExportError(f"{path}: not found (is {directory} an export directory? run `lapa export onnx`)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: cannot read ({err})") from err
    if not isinstance(doc, dict):
        raise ExportError(f"{path}: expected a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {doc.get('format_version')!r}, this code reads {FORMAT_VERSION}: "
                          "re-export with `lapa export onnx`")
    try:
        size = doc["image_size"]
        meta = ExportMetadata(
            image_size=(int(size[0]), int(size[1])),
            chunk_size=int(doc["chunk_size"]),
            action_dim=int(doc["action_dim"]),
            num_bins=int(doc["num_bins"]),
            text_dim=int(doc["text_encoder"]["embedding_dim"]),
            control_hz=float(doc["control_hz"]),
            max_seq_length=int(doc["text_encoder"]["max_seq_length"]),
            model_hash=str(doc["checkpoint"]["sha256"]),
            files={str(k): str(v) for k, v in doc["files"].items()},
            raw=doc,
            # exports older than the proprio state and the l1 head lack these keys: no state, bins
            state_dim=int(doc.get("state_dim", 0)),
            action_output=str(doc.get("action_output", "bins")),
            cameras=tuple(str(c) for c in doc.get("cameras", ["scene"])),
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ExportError(f"{path}: malformed ({err!r})") from err
    _check_policy_io(path, meta)
    for name in (POLICY_ONNX, TEXT_ONNX, TOKENIZER_FILE):
        if name not in meta.files:
            raise ExportError(f"{path}: lists no {name}")
    for name in meta.files:  # the required three, and the optional graphs it lists (the int8 copy)
        if Path(name).name != name:
            raise ExportError(f"{path}: file name {name!r} is not a plain name inside the export directory")
        file = directory / name
        if not file.is_file():
            raise ExportError(f"{file}: missing from the export directory")
        if verify_hashes and file_sha256(file) != meta.files[name]:
            raise ExportError(f"{file} does not match {METADATA_FILE} (sha256 differs): the file was changed "
                              "or truncated after export; re-export with `lapa export onnx`")
    return meta


def _check_policy_io(path: Path, meta: ExportMetadata) -> None:
    """state_dim, action_output and the recorded policy I/O names agree with each other."""
    doc = meta.raw
    lags = doc.get("state_history") or []
    expected = state_input_dim(lags) if meta.state_dim else 0
    if meta.state_dim not in STATE_DIMS and meta.state_dim != expected:
        raise ExportError(f"{path}: state_dim {meta.state_dim}, expected one of {STATE_DIMS}, or "
                          f"{expected} for the state history {lags}")
    if lags and meta.state_dim != expected:
        raise ExportError(f"{path}: state_dim {meta.state_dim} does not match the state history {lags} "
                          f"(expected {expected}); re-export")
    if meta.action_output not in ACTION_OUTPUTS:
        raise ExportError(f"{path}: action_output {meta.action_output!r}, expected one of {ACTION_OUTPUTS}")
    if meta.cameras not in CAMERA_SETS:
        raise ExportError(f"{path}: cameras {list(meta.cameras)}, expected one of {[list(c) for c in CAMERA_SETS]}")
    want_state = STATE_INPUT if meta.state_dim else None
    if "state_input" in doc and doc["state_input"] != want_state:
        raise ExportError(f"{path}: state_input {doc['state_input']!r} does not match state_dim {meta.state_dim} "
                          f"(expected {want_state!r}); re-export")
    inputs, outputs = policy_io_names(meta.state_dim, meta.action_output, meta.cameras)
    for key, want in (("policy_inputs", inputs), ("policy_outputs", outputs)):
        if key in doc and doc[key] != want:
            raise ExportError(f"{path}: {key} {doc[key]} do not match state_dim {meta.state_dim}, "
                              f"action_output {meta.action_output!r} and cameras {list(meta.cameras)} "
                              f"(expected {want}); re-export")


def _dims(shape: Any) -> list[int | str | None]:
    return [d if isinstance(d, int) else (str(d) if d is not None else None) for d in shape]


def _shape(dims: list[int | str | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def check_io(meta: ExportMetadata, graph: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Compare a graph's declared I/O (name -> shape with ints or symbolic names) with the metadata.

    Catches an export directory whose metadata describes another graph (e.g. metadata says 96x96
    images while the graph takes 64x64) before the first request fails deep inside a runtime.
    """
    H, W = meta.image_size
    K, A, nb, D = meta.chunk_size, meta.action_dim, meta.num_bins, meta.text_dim
    if graph == POLICY_ONNX:
        want_in = {IMAGE_INPUT: [None, H, W, 3], TEXT_EMB_INPUT: [None, D]}
        if meta.has_wrist_camera:
            want_in[WRIST_IMAGE_INPUT] = [None, H, W, 3]
        if meta.state_dim:
            want_in[STATE_INPUT] = [None, meta.state_dim]
        want_out = {ACTIONS_OUTPUT: [None, K, A], BINS_OUTPUT: [None, K, A]}
        if meta.action_output == "l1":
            want_out[NORMALIZED_OUTPUT] = [None, K, A]
        else:
            want_out[LOGITS_OUTPUT] = [None, K, A, nb]
        extra = sorted(set(inputs) - set(want_in))
        if extra:  # e.g. a state graph under metadata without state_dim: every call would fail
            raise ExportError(f"{graph}: takes inputs {extra} that {METADATA_FILE} does not describe (its "
                              f"state_dim is {meta.state_dim}, its cameras {list(meta.cameras)}): the graph and "
                              "metadata do not belong together")
    else:
        want_in = {INPUT_IDS: [None, None], ATTENTION_MASK: [None, None]}
        want_out = {TEXT_EMB_OUTPUT: [None, D]}
    for kind, want, have in (("input", want_in, inputs), ("output", want_out, outputs)):
        if set(want) - set(have):
            raise ExportError(f"{graph}: {kind}s {sorted(have)} lack {sorted(set(want) - set(have))} "
                              f"that {METADATA_FILE} promises: the graph and metadata do not belong together")
        for name, dims in want.items():
            got = _dims(have[name])
            mismatch = len(got) != len(dims) or any(
                w is not None and isinstance(g, int) and g != w for w, g in zip(dims, got, strict=False)
            )
            if mismatch:
                raise ExportError(f"{graph}: {kind} '{name}' has shape {_shape(got)}, {METADATA_FILE} says "
                                  f"{_shape(dims)}: the graph and metadata do not belong together; re-export")
