"""Generate the committed corpus of malformed and hostile ONNX files (run from anywhere).

Each case is a small file showing one problem.  Cases that need several files, links or
folders (external data) are built at test time by ``tests/hostile_cases.py``; this corpus holds
the single-file ones, so they can be replayed by hand:

    python tests/corpus/onnx/make_corpus.py                  # rewrite the corpus
    netinit tests/corpus/onnx/cycle.onnx --all -o /tmp/x.onnx  # exit 3, one line

``expected.json`` maps each file to the exit codes netinit may give, run with ``--all`` and run
without it ("missing"): 3 (invalid input) for almost all.  A few are valid-but-odd models that
may also succeed (0), and a corrupt ``W`` may be replaced (0) under ``--all``, which never reads
it, but must be refused (3) without ``--all``, which would copy it.  Never 1 (a bug).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = [helper.make_opsetid("", 17)]


def gemm_model(
    weight: TensorProto | None,
    *,
    nodes: list[onnx.NodeProto] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[TensorProto] | None = None,
) -> onnx.ModelProto:
    """y = Gemm(x, W, b) with W [3,4]: the smallest graph whose W is a parameter."""
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        nodes or [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializers if initializers is not None else [t for t in (weight, bias) if t is not None],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def weight(dims: list[int], raw: bytes | None = None, data_type: int = TensorProto.FLOAT) -> TensorProto:
    tensor = TensorProto(name="W", data_type=data_type, dims=dims)
    if raw is not None:
        tensor.raw_data = raw
    return tensor


def float_data_weight(dims: list[int], values: list[float]) -> TensorProto:
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=dims)
    tensor.float_data.extend(values)
    return tensor


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    key, length, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, length):
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def nested_if(depth: int) -> bytes:
    """Model -> graph -> If node -> then_branch graph -> If … ``depth`` levels deep, written by hand:
    the protobuf library itself refuses to build it (its recursion limit is 100)."""
    graph = _field(2, b"leaf")  # GraphProto.name
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, graph)  # name, type=GRAPH, g
        node = _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attribute)
        graph = _field(1, node)  # GraphProto.node
    opset = b"\x10\x11"  # OperatorSetIdProto.version = 17
    return b"\x08\x08" + _field(7, graph) + _field(8, opset)  # ir_version 8, graph, opset_import


REPLACED_UNDER_ALL = {
    "raw_data_too_short",
    "raw_data_too_long",
    "float_data_count_wrong",
    "unknown_data_type",
    "sparse_index_out_of_range",
}


def cases() -> dict[str, tuple[bytes, list[int]]]:
    """name -> (file bytes, allowed exit codes without --all)."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    good = gemm_model(numpy_helper.from_array(w, "W"))
    x_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    found: dict[str, tuple[bytes, list[int]]] = {
        "empty": (b"", [3]),
        "text": (b"this is not a model\n", [3]),
        "png_header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, [3]),
        "gzip_of_model": (b"\x1f\x8b\x08\x00" + good.SerializeToString()[:64], [3]),
        "zeros": (b"\x00" * 256, [3]),
        "ff_bytes": (b"\xff" * 256, [3]),
        # Protobuf of the wrong message: decodes as a ModelProto with unknown/garbage fields.
        "tensor_proto": (numpy_helper.from_array(w, "W").SerializeToString(), [3]),
        "graph_proto": (good.graph.SerializeToString(), [3]),
        "node_proto": (good.graph.node[0].SerializeToString(), [3]),
        "model_without_graph": (
            helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString()[:8],
            [3],
        ),
        # Graph problems.
        "dangling_input": (
            gemm_model(
                numpy_helper.from_array(w, "W"),
                nodes=[
                    helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
                    helper.make_node("Add", ["h", "ghost"], ["y"]),
                ],
            ).SerializeToString(),
            [3],
        ),
        "cycle": (
            gemm_model(
                numpy_helper.from_array(w, "W"),
                nodes=[
                    helper.make_node("Gemm", ["x", "W", "z"], ["h"], transB=1),
                    helper.make_node("Relu", ["h"], ["z"]),
                    helper.make_node("Identity", ["z"], ["y"]),
                ],
            ).SerializeToString(),
            [3],
        ),
        "parameter_input_without_shape": (
            gemm_model(
                None,
                inputs=[x_input, helper.make_tensor_value_info("W", TensorProto.FLOAT, None)],
            ).SerializeToString(),
            [0, 3],  # nothing to fill it with: refused, or left alone with a note
        ),
        "parameter_input_symbolic_shape": (
            gemm_model(
                None,
                inputs=[x_input, helper.make_tensor_value_info("W", TensorProto.FLOAT, ["out", "in"])],
            ).SerializeToString(),
            [0, 3],
        ),
        "raw_data_too_short": (gemm_model(weight([3, 4], b"\x00" * 10)).SerializeToString(), [3]),
        "raw_data_too_long": (gemm_model(weight([3, 4], b"\x00" * 100)).SerializeToString(), [3]),
        "float_data_count_wrong": (
            gemm_model(float_data_weight([3, 4], [1.0] * 5)).SerializeToString(),
            [3],
        ),
        "negative_dims": (gemm_model(weight([-3, 4], b"")).SerializeToString(), [3]),
        "terabyte_initializer_without_data": (
            gemm_model(weight([1 << 20, 1 << 20])).SerializeToString(),
            [3, 5],
        ),
        "terabyte_graph_input": (
            gemm_model(
                None,
                inputs=[x_input, helper.make_tensor_value_info("W", TensorProto.FLOAT, [1 << 20, 1 << 20])],
            ).SerializeToString(),
            [3, 5],
        ),
        "exabyte_dims_overflow": (gemm_model(weight([1 << 62, 1 << 62])).SerializeToString(), [3, 5]),
        "unknown_data_type": (
            gemm_model(weight([3, 4], b"\x00" * 48, data_type=999)).SerializeToString(),
            [3],
        ),
        "undefined_data_type": (
            gemm_model(weight([3, 4], b"\x00" * 48, data_type=0)).SerializeToString(),
            [3],
        ),
        "string_weight": (
            gemm_model(helper.make_tensor("W", TensorProto.STRING, [3, 4], [b"a"] * 12)).SerializeToString(),
            [0, 3],
        ),
        "duplicate_initializer": (
            gemm_model(
                None, initializers=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(w, "W"), bias]
            ).SerializeToString(),
            [0, 3],
        ),
        "initializer_name_empty": (
            gemm_model(None, initializers=[numpy_helper.from_array(w, ""), bias]).SerializeToString(),
            [0, 3],
        ),
        "nested_if_200": (nested_if(200), [3]),
        "nested_if_20": (nested_if(20), [0, 3]),
        "huge_varint_length": (b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\x7f", [3]),
        "length_past_end": (b"\x3a\x80\x80\x80\x08" + b"\x00" * 16, [3]),
    }
    # Found by the atheris run (fuzz/run.py): ranks and attributes the classifier trusted.
    found["fuzz_gemm_weight_rank_1"] = (
        gemm_model(numpy_helper.from_array(np.zeros(3, np.float32), "W")).SerializeToString(),
        [3],
    )
    conv = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=0, kernel_shape=[3, 3])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 3, 3])],
        [numpy_helper.from_array(np.zeros((8, 4, 3, 3), np.float32), "W")],
    )
    found["fuzz_conv_group_zero"] = (helper.make_model(conv, opset_imports=OPSET).SerializeToString(), [3])
    # A message Python's protobuf parses but onnx.checker's C++ parser refuses (ValueError):
    # the fuzzer's own bytes, kept as committed.
    found["fuzz_checker_unparsable"] = ((HERE / "fuzz_checker_unparsable.onnx").read_bytes(), [3])
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(2, np.float32), "W"),
        numpy_helper.from_array(np.array([5, 999], np.int64), "W_idx"),
        [3, 4],
    )
    sparse_model = gemm_model(None, initializers=[bias])
    sparse_model.graph.sparse_initializer.extend([sparse])
    found["sparse_index_out_of_range"] = (sparse_model.SerializeToString(), [3])
    return found


def main() -> None:
    expected: dict[str, dict[str, list[int]]] = {}
    generated = cases()  # before the old files go: some cases are committed bytes
    for old in HERE.glob("*.onnx"):
        old.unlink()
    for name, (payload, allowed) in generated.items():
        (HERE / f"{name}.onnx").write_bytes(payload)
        under_all = sorted({0, *allowed}) if name in REPLACED_UNDER_ALL else allowed
        expected[f"{name}.onnx"] = {"all": under_all, "missing": allowed}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
