"""What TensorRT will need from an exported graph, checked here on CPU (no TensorRT, no GPU).

- the ONNX checker with full shape/type inference;
- polygraphy's constant folding (its sanitiser: `polygraphy surgeon sanitize --fold-constants`),
  which leaves TensorRT no shape sub-graphs to evaluate at build time and reports what it folded;
- fp32 attention scores: every Softmax must read float32, and so must the MatMul that makes its
  scores. The VLA and MiniLM compute `q.float() @ k.float()` and the softmax in float32, so an fp16
  TensorRT build that pins these layers to fp32 (export/tensorrt_build.py) has no fp16 score to
  overflow; a graph in which a Softmax reads float16 is refused here, before anyone builds it.
- the I/O names, dtypes and which dimensions are dynamic, recorded in metadata.json.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from export.metadata import ExportError

SCORE_OPS = ("MatMul", "Gemm", "Einsum")
# ops between a score MatMul and its Softmax (scale, mask, casts, reshapes)
PASS_THROUGH_OPS = ("Where", "Add", "Sub", "Mul", "Div", "Cast", "Reshape", "Transpose", "Identity", "Expand")
CONSTANT_OPS = ("Constant", "ConstantOfShape", "Shape")


def dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


@dataclass
class SoftmaxInfo:
    node: str
    input_dtype: str
    score_node: str | None  # the MatMul that makes the scores
    score_input_dtypes: list[str]
    path: list[str]  # node names from the score MatMul to the Softmax, in graph order

    @property
    def fp32(self) -> bool:
        return self.input_dtype == "float" and all(t == "float" for t in self.score_input_dtypes)


@dataclass
class GraphReport:
    path: str
    nodes_before: int
    nodes_after: int
    ops: dict[str, int]
    io: dict[str, dict[str, Any]]
    softmax: list[SoftmaxInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["softmax_fp32"] = all(s.fp32 for s in self.softmax)
        d["softmax_count"] = len(self.softmax)
        d["softmax"] = [{"node": s.node, "input_dtype": s.input_dtype, "score_node": s.score_node,
                         "score_input_dtypes": s.score_input_dtypes} for s in self.softmax[:3]]  # a sample
        return d


def load_model(path: str | Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from err


@contextlib.contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    import onnxruntime
    from polygraphy.logger import G_LOGGER

    onnxruntime.set_default_logger_severity(3)  # polygraphy folds with ORT sessions; their warnings are noise
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = old


def sanitize(model: onnx.ModelProto) -> onnx.ModelProto:
    """polygraphy constant folding (3 passes, shapes folded) + shape inference."""
    from polygraphy.backend.onnx import fold_constants

    with _quiet_polygraphy():
        return fold_constants(model, num_passes=3, do_shape_inference=True, partitioning="basic",
                              fold_shapes=True, allow_onnxruntime_shape_inference=False)


def io_spec(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}; symbolic dims by name."""
    def spec(values) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out[v.name] = {"dtype": dtype_name(t.elem_type), "shape": shape}
        return out

    initializers = {i.name for i in model.graph.initializer}
    return {"inputs": spec(i for i in model.graph.input if i.name not in initializers),
            "outputs": spec(model.graph.output)}


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def softmax_report(model: onnx.ModelProto) -> list[SoftmaxInfo]:
    """Each Softmax with its input dtype and the score MatMul found by walking back through the mask/scale ops."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = _value_types(inferred)
    producer = {out: node for node in inferred.graph.node for out in node.output}
    initializers = {i.name for i in inferred.graph.initializer}

    def is_data(name: str) -> bool:
        node = producer.get(name)
        return bool(name) and name not in initializers and node is not None and node.op_type not in CONSTANT_OPS

    infos = []
    for node in inferred.graph.node:
        if node.op_type != "Softmax":
            continue
        path, current, score = [node.name], producer.get(node.input[0]), None
        for _ in range(12):
            if current is None:
                break
            path.append(current.name)
            if current.op_type in SCORE_OPS:
                score = current
                break
            if current.op_type not in PASS_THROUGH_OPS:
                break
            data = [i for i in current.input if is_data(i)]
            current = producer.get(data[0]) if data else None
        infos.append(SoftmaxInfo(
            node=node.name,
            input_dtype=dtype_name(types.get(node.input[0], 0)),
            score_node=score.name if score is not None else None,
            score_input_dtypes=[dtype_name(types.get(i, 0)) for i in score.input[:2]] if score is not None else [],
            path=path[::-1] if score is not None else [node.name],
        ))
    return infos


def check_graph(path: str | Path, fold: bool = True) -> GraphReport:
    """Check (and, with `fold`, constant-fold in place) one ONNX file; ExportError listing the problems."""
    path = Path(path)
    model = load_model(path)
    before = len(model.graph.node)
    if fold:
        try:
            model = sanitize(model)
        except ExportError:
            raise
        except Exception as err:
            raise ExportError(f"{path}: polygraphy could not fold the graph's constants: {err}") from err
        onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: the ONNX checker rejects the graph: {err}") from err
    report = GraphReport(path=path.name, nodes_before=before, nodes_after=len(model.graph.node),
                         ops=dict(Counter(n.op_type for n in model.graph.node).most_common()), io=io_spec(model),
                         softmax=softmax_report(model))
    for info in report.softmax:
        if not info.fp32:
            report.problems.append(f"Softmax {info.node} reads {info.input_dtype} scores made by "
                                   f"{info.score_node} from {info.score_input_dtypes}: attention scores must be "
                                   "float32 (cast q and k to float before the score matmul)")
    if report.problems:
        raise ExportError(f"{path}: not ready for TensorRT: " + "; ".join(report.problems))
    return report

