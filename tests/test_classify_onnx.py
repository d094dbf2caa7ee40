"""Classification of hand-built graphs: one small graph per slot rule, pattern, and source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import float_graph, float_model

from netinit_cli.classify import classify_model
from netinit_cli.errors import InputError
from netinit_cli.model import Param, Role


def w(name: str, *shape: int, dtype: type = np.float32) -> onnx.TensorProto:
    values = np.random.default_rng(len(name)).standard_normal(shape).astype(dtype)
    return numpy_helper.from_array(values, name)


def i64(name: str, values: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def classify(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    inputs: dict[str, list[int | str]] | None = None,
    *,
    opset: int = 17,
    ms: bool = False,
    **graph_extra: object,
) -> dict[str, Param]:
    inputs = inputs if inputs is not None else {"x": ["N", 8]}
    domains = {"com.microsoft": 1} if ms else None
    model = float_model(
        nodes, inputs, {nodes[-1].output[0]: None}, inits, opset=opset, domains=domains, **graph_extra
    )
    params, _ = classify_model(model)
    return {p.name: p for p in params}


def node(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
    domain = attrs.pop("domain", "")
    return helper.make_node(op, inputs, [output], domain=domain, **attrs)  # type: ignore[arg-type]


def fans(param: Param) -> tuple[tuple[int, int], tuple[int, int]]:
    assert param.layout is not None, param
    return param.layout.fans(param.shape), param.layout.torch_fans(param.shape)


# -- weight slots: (nodes, initializers, tensor, role, semantic fans, torch fans) -------------

WEIGHT_CASES = {
    "gemm transB=1 [out,in]": (
        [node("Gemm", ["x", "W", "b"], "y", transB=1)],
        [w("W", 16, 8), w("b", 16)],
        "W",
        Role.WEIGHT,
        (8, 16),
        (8, 16),
    ),
    "gemm transB=0 [in,out] (GPT-2 Conv1D)": (
        [node("Gemm", ["x", "W"], "y")],
        [w("W", 8, 24)],
        "W",
        Role.WEIGHT,
        (8, 24),
        (8, 24),
    ),
    "matmul right [in,out]": (
        [node("MatMul", ["x", "W"], "y")],
        [w("W", 8, 32)],
        "W",
        Role.WEIGHT,
        (8, 32),
        (8, 32),
    ),
    "matmul right batched heads [h,in,out]": (
        [node("MatMul", ["x", "W"], "y")],
        [w("W", 4, 8, 2)],
        "W",
        Role.WEIGHT,
        (8, 2),
        (8, 2),
    ),
    "matmul left W@x [out,in]": (
        [node("MatMul", ["W", "x"], "y")],
        [w("W", 5, 6)],
        "W",
        Role.WEIGHT,
        (6, 5),
        (6, 5),
    ),
    "transpose then matmul (legacy no folding)": (
        [node("Transpose", ["W"], "Wt", perm=[1, 0]), node("MatMul", ["x", "Wt"], "y")],
        [w("W", 32, 8)],
        "W",
        Role.WEIGHT,
        (8, 32),
        (8, 32),
    ),
    "conv": (
        [node("Conv", ["x", "W", "B"], "y")],
        [w("W", 6, 3, 5, 5), w("B", 6)],
        "W",
        Role.WEIGHT,
        (75, 150),
        (75, 150),
    ),
    "grouped conv [6,2,3,2] group=3": (
        [node("Conv", ["x", "W"], "y", group=3)],
        [w("W", 6, 2, 3, 2)],
        "W",
        Role.WEIGHT,
        (12, 12),
        (12, 36),
    ),
    "depthwise conv [8,1,3,3] group=8": (
        [node("Conv", ["x", "W"], "y", group=8)],
        [w("W", 8, 1, 3, 3)],
        "W",
        Role.WEIGHT,
        (9, 9),
        (9, 72),
    ),
    "conv transpose [in,out,k,k]": (
        [node("ConvTranspose", ["x", "W"], "y")],
        [w("W", 3, 4, 3, 3)],
        "W",
        Role.WEIGHT,
        (27, 36),
        (36, 27),
    ),
    "einsum bsd,hde->bshe": (
        [node("Einsum", ["x", "W"], "y", equation="bsd,hde->bshe")],
        [w("W", 4, 8, 16)],
        "W",
        Role.WEIGHT,
        (8, 64),
        (128, 64),
    ),
    "gather embedding": (
        [node("Cast", ["x"], "ids", to=TensorProto.INT64), node("Gather", ["E", "ids"], "y")],
        [w("E", 50, 16)],
        "E",
        Role.EMBEDDING,
        (16, 50),
        (16, 50),
    ),
    "lstm W [dirs,4H,in]": (
        [node("LSTM", ["x", "W", "R", "B"], "y", hidden_size=5)],
        [w("W", 1, 20, 8), w("R", 1, 20, 5), w("B", 1, 40)],
        "W",
        Role.WEIGHT,
        (8, 5),
        (8, 20),
    ),
    "lstm R recurrent": (
        [node("LSTM", ["x", "W", "R", "B"], "y", hidden_size=5)],
        [w("W", 1, 20, 8), w("R", 1, 20, 5), w("B", 1, 40)],
        "R",
        Role.RECURRENT,
        (5, 5),
        (5, 20),
    ),
    "gru W [dirs,3H,in] bidirectional": (
        [node("GRU", ["x", "W", "R"], "y", hidden_size=4, direction="bidirectional")],
        [w("W", 2, 12, 8), w("R", 2, 12, 4)],
        "W",
        Role.WEIGHT,
        (8, 4),
        (8, 12),
    ),
    "lstm weight via Slice/Concat gate reorder and Unsqueeze": (
        [
            node("Slice", ["Wt", "s0", "s1", "ax"], "a"),
            node("Slice", ["Wt", "s1", "s2", "ax"], "b"),
            node("Concat", ["b", "a"], "c", axis=0),
            node("Unsqueeze", ["c", "ax"], "W3"),
            node("LSTM", ["x", "W3"], "y", hidden_size=5),
        ],
        [w("Wt", 20, 8), i64("s0", [0]), i64("s1", [10]), i64("s2", [20]), i64("ax", [0])],
        "Wt",
        Role.WEIGHT,
        (8, 5),
        (8, 20),
    ),
    "com.microsoft Attention [in, 3·hidden]": (
        [node("Attention", ["x", "W", "B"], "y", num_heads=2, domain="com.microsoft")],
        [w("W", 8, 24), w("B", 24)],
        "W",
        Role.WEIGHT,
        (8, 24),
        (8, 24),
    ),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES), ids=list(WEIGHT_CASES))
def test_weight_slots(case: str) -> None:
    nodes, inits, name, role, semantic, torch_fans = WEIGHT_CASES[case]
    params = classify(nodes, inits, ms="com.microsoft" in case)
    assert params[name].role is role, params[name].reason
    assert fans(params[name]) == (semantic, torch_fans)


def test_transpose_is_named_in_the_reason() -> None:
    params = classify(
        [node("Transpose", ["W"], "Wt", perm=[1, 0]), node("MatMul", ["x", "Wt"], "y")], [w("W", 32, 8)]
    )
    assert params["W"].reason == "MatMul input 1 (B) via Transpose(perm=[1, 0])"
    assert params["W"].layout is not None and params["W"].layout.torch_perm is None  # stored [out, in]


# -- fixed-role slots --------------------------------------------------------------------------

ROLE_CASES = {
    "batchnorm": (
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], "y")],
        [w("s", 8), w("b", 8), w("m", 8), w("v", 8)],
        {"s": Role.NORM_SCALE, "b": Role.NORM_SHIFT, "m": Role.RUNNING_MEAN, "v": Role.RUNNING_VAR},
        17,
    ),
    "layernorm": (
        [node("LayerNormalization", ["x", "s", "b"], "y", axis=-1)],
        [w("s", 8), w("b", 8)],
        {"s": Role.NORM_SCALE, "b": Role.NORM_SHIFT},
        17,
    ),
    "instancenorm": (
        [node("InstanceNormalization", ["x", "s", "b"], "y")],
        [w("s", 8), w("b", 8)],
        {"s": Role.NORM_SCALE, "b": Role.NORM_SHIFT},
        17,
    ),
    "groupnorm 18 per group": (
        [node("GroupNormalization", ["x", "s", "b"], "y", num_groups=2)],
        [w("s", 2), w("b", 2)],
        {"s": Role.NORM_SCALE, "b": Role.NORM_SHIFT},
        18,
    ),
    "groupnorm 21 per channel": (
        [node("GroupNormalization", ["x", "s", "b"], "y", num_groups=2)],
        [w("s", 8), w("b", 8)],
        {"s": Role.NORM_SCALE, "b": Role.NORM_SHIFT},
        21,
    ),
    "rmsnorm 23": ([node("RMSNormalization", ["x", "s"], "y")], [w("s", 8)], {"s": Role.NORM_SCALE}, 23),
    "prelu via Unsqueeze": (
        [node("Unsqueeze", ["a", "ax"], "a3"), node("PRelu", ["x", "a3"], "y")],
        [w("a", 8), i64("ax", [1, 2])],
        {"a": Role.PRELU_SLOPE, "ax": Role.CONSTANT},
        17,
    ),
    "lstm bias, peephole, initial states": (
        [node("LSTM", ["x", "W", "R", "B", "", "h0", "c0", "P"], "y", hidden_size=5)],
        [
            w("W", 1, 20, 8),
            w("R", 1, 20, 5),
            w("B", 1, 40),
            w("h0", 1, 1, 5),
            w("c0", 1, 1, 5),
            w("P", 1, 15),
        ],
        {"B": Role.BIAS, "P": Role.BIAS, "h0": Role.CONSTANT, "c0": Role.CONSTANT},
        17,
    ),
    "gemm bias": (
        [node("Gemm", ["x", "W", "C"], "y", transB=1)],
        [w("W", 4, 8), w("C", 4)],
        {"C": Role.BIAS},
        17,
    ),
    "float resize scales are constant": (
        [node("Resize", ["x", "roi", "scales"], "y")],
        [w("roi", 0), w("scales", 2)],
        {"roi": Role.CONSTANT, "scales": Role.CONSTANT},
        17,
    ),
    "int shape is constant": (
        [node("Reshape", ["x", "shape"], "y")],
        [i64("shape", [-1, 2])],
        {"shape": Role.CONSTANT},
        17,
    ),
    "float scalar in Mul": ([node("Mul", ["x", "k"], "y")], [w("k")], {"k": Role.SCALAR}, 17),
    "float tensor in Mul without a pattern": (
        [node("Mul", ["x", "k"], "y")],
        [w("k", 8)],
        {"k": Role.UNKNOWN},
        17,
    ),
    "gather with constant indices is not an embedding": (
        [node("Gather", ["T", "idx"], "g"), node("Add", ["x", "g"], "y")],
        [w("T", 10, 8), i64("idx", [1])],
        {"T": Role.UNKNOWN},
        17,
    ),
    "matmul of two constants is folding material": (
        [node("MatMul", ["A", "B"], "c"), node("Add", ["x", "c"], "y")],
        [w("A", 8, 8), w("B", 8, 8)],
        {"A": Role.UNKNOWN, "B": Role.UNKNOWN},
        17,
    ),
}


@pytest.mark.parametrize("case", list(ROLE_CASES), ids=list(ROLE_CASES))
def test_roles(case: str) -> None:
    nodes, inits, expected, opset = ROLE_CASES[case]
    params = classify(nodes, inits, opset=opset)
    assert {k: params[k].role for k in expected} == expected, {k: params[k].reason for k in expected}


def test_lstm_layouts_are_gate_blocked() -> None:
    params = classify(
        [node("LSTM", ["x", "W", "R", "B"], "y", hidden_size=5)],
        [w("W", 1, 20, 8), w("R", 1, 20, 5), w("B", 1, 40)],
    )
    assert params["W"].layout is not None and params["W"].layout.blocks == 4
    assert params["B"].layout is not None and params["B"].layout.blocks == 8


# -- bias through Add / Sum --------------------------------------------------------------------


@pytest.mark.parametrize("order", ["bias first (legacy)", "bias second (dynamo)"])
def test_bias_after_matmul_either_operand_order(order: str) -> None:
    add = ["b", "m"] if order.startswith("bias first") else ["m", "b"]
    params = classify([node("MatMul", ["x", "W"], "m"), node("Add", add, "y")], [w("W", 8, 16), w("b", 16)])
    assert params["b"].role is Role.BIAS and "after MatMul" in params["b"].reason


@pytest.mark.parametrize(
    ("shape", "role"),
    [
        ((16,), Role.BIAS),
        ((1, 16), Role.BIAS),
        ((1, 1, 16), Role.BIAS),
        ((16, 1), Role.UNKNOWN),
        ((8,), Role.UNKNOWN),
    ],
)
def test_bias_broadcast_rule_after_matmul(shape: tuple[int, ...], role: Role) -> None:
    params = classify(
        [node("MatMul", ["x", "W"], "m"), node("Add", ["m", "b"], "y")], [w("W", 8, 16), w("b", *shape)]
    )
    assert params["b"].role is role, params["b"].reason


def test_one_output_bias_is_not_a_scalar() -> None:
    """skl2onnx MLP: ``intercepts [1,1]`` after a ``[in,1]`` MatMul is a bias, not a scalar."""
    params = classify(
        [node("MatMul", ["x", "W"], "m"), node("Add", ["m", "b"], "y")], [w("W", 8, 1), w("b", 1, 1)]
    )
    assert params["b"].role is Role.BIAS


def test_causal_mask_after_attention_matmul_is_not_a_bias() -> None:
    nodes = [node("MatMul", ["x", "xt"], "qk"), node("Add", ["qk", "mask"], "y")]
    params = classify(nodes, [w("mask", 1, 1, 8, 8)], {"x": [1, 2, 8, 4], "xt": [1, 2, 4, 8]})
    assert params["mask"].role is Role.UNKNOWN


@pytest.mark.parametrize(
    ("shape", "role"), [((1, 6, 1, 1), Role.BIAS), ((6, 1, 1), Role.BIAS), ((6,), Role.UNKNOWN)]
)
def test_conv_bias_through_add_uses_the_channel_axis(shape: tuple[int, ...], role: Role) -> None:
    params = classify(
        [node("Conv", ["x", "W"], "c"), node("Add", ["c", "b"], "y")], [w("W", 6, 3, 3, 3), w("b", *shape)]
    )
    assert params["b"].role is role


def test_bias_through_reshape_after_gemm_and_sum() -> None:
    params = classify(
        [node("Gemm", ["x", "W"], "g", transB=1), node("Sum", ["g", "b"], "y")], [w("W", 4, 8), w("b", 4)]
    )
    assert params["b"].role is Role.BIAS


# -- decomposed normalizations -----------------------------------------------------------------


def decomposed_layernorm(scale_shape: tuple[int, ...]) -> dict[str, Param]:
    nodes = [
        node("ReduceMean", ["x"], "mu", axes=[-1]),
        node("Sub", ["x", "mu"], "d"),
        node("Pow", ["d", "two"], "d2"),
        node("ReduceMean", ["d2"], "var", axes=[-1]),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "sd"),
        node("Div", ["d", "sd"], "xhat"),
        node("Mul", ["xhat", "gamma"], "scaled"),
        node("Add", ["scaled", "beta"], "y"),
    ]
    inits = [w("two"), w("eps"), w("gamma", *scale_shape), w("beta", *scale_shape)]
    return classify(nodes, inits, opset=17)


@pytest.mark.parametrize("shape", [(8,), (1, 8), (1, 8, 1)])
def test_decomposed_layernorm(shape: tuple[int, ...]) -> None:
    params = decomposed_layernorm(shape)
    assert params["gamma"].role is Role.NORM_SCALE
    assert params["beta"].role is Role.NORM_SHIFT
    assert params["two"].role is Role.SCALAR and params["eps"].role is Role.SCALAR


def test_decomposed_rmsnorm() -> None:
    nodes = [
        node("Pow", ["x", "two"], "x2"),
        node("ReduceMean", ["x2"], "ms", axes=[-1]),
        node("Add", ["ms", "eps"], "mse"),
        node("Sqrt", ["mse"], "rms"),
        node("Reciprocal", ["rms"], "inv"),
        node("Mul", ["x", "inv"], "xhat"),
        node("Mul", ["xhat", "g"], "y"),
    ]
    params = classify(nodes, [w("two"), w("eps"), w("g", 8)])
    assert params["g"].role is Role.NORM_SCALE


def test_groupnorm_below_opset_18() -> None:
    """Reshape → InstanceNormalization(ones(G), zeros(G)) → Reshape → Mul([C,1,1]) → Add."""
    nodes = [
        node("Reshape", ["x", "grouped"], "xg"),
        node("InstanceNormalization", ["xg", "ones", "zeros"], "n"),
        node("Reshape", ["n", "back"], "nb"),
        node("Mul", ["nb", "gw"], "s"),
        node("Add", ["s", "gb"], "y"),
    ]
    inits = [i64("grouped", [0, 2, -1]), w("ones", 2), w("zeros", 2), i64("back", [1, 8, 4, 4])]
    inits += [w("gw", 8, 1, 1), w("gb", 8, 1, 1)]
    params = classify(nodes, inits, {"x": [1, 8, 4, 4]})
    assert params["gw"].role is Role.NORM_SCALE and params["gb"].role is Role.NORM_SHIFT
    assert params["ones"].role is Role.CONSTANT and params["zeros"].role is Role.CONSTANT


# -- sharing -----------------------------------------------------------------------------------


def test_tied_embedding_and_lm_head_is_one_embedding() -> None:
    nodes = [
        node("Cast", ["x"], "ids", to=TensorProto.INT64),
        node("Gather", ["E", "ids"], "h"),
        node("Transpose", ["E"], "Et", perm=[1, 0]),
        node("MatMul", ["h", "Et"], "y"),
    ]
    params = classify(nodes, [w("E", 50, 16)])
    assert params["E"].role is Role.EMBEDDING
    assert "tied with MatMul input 1" in params["E"].reason


def test_shared_weight_through_identity_is_one_weight() -> None:
    nodes = [
        node("Identity", ["W"], "W2"),
        node("Gemm", ["x", "W"], "h", transB=1),
        node("Gemm", ["h", "W2"], "y", transB=1),
    ]
    params = classify(nodes, [w("W", 8, 8)])
    assert params["W"].role is Role.WEIGHT and "shared by 2 uses" in params["W"].reason


def test_conflicting_uses_are_reported() -> None:
    nodes = [node("BatchNormalization", ["x", "s", "b", "m", "s"], "y")]
    params = classify(nodes, [w("s", 8), w("b", 8), w("m", 8)])
    assert params["s"].role is Role.CONFLICT
    assert "norm_scale" in params["s"].reason and "running_var" in params["s"].reason


# -- quantized patterns -------------------------------------------------------------------------


def test_qdq_weight_and_its_scales_are_quantized() -> None:
    nodes = [
        node("DequantizeLinear", ["Wq", "ws", "wz"], "W"),
        node("Conv", ["x", "W", "B"], "y"),
    ]
    inits = [w("Wq", 4, 3, 3, 3, dtype=np.int8), w("ws", 4), w("wz", 4, dtype=np.int8), w("B", 4)]
    params = classify(nodes, inits)
    assert {k: params[k].role for k in ("Wq", "ws", "wz")} == dict.fromkeys(
        ("Wq", "ws", "wz"), Role.QUANTIZED
    )
    assert params["B"].role is Role.BIAS


def test_dynamic_quantization_bias_after_dequant_mul() -> None:
    nodes = [
        node("MatMulInteger", ["xq", "Wq"], "acc"),
        node("Cast", ["acc"], "accf", to=TensorProto.FLOAT),
        node("Mul", ["accf", "scale"], "deq"),
        node("Add", ["deq", "b"], "y"),
    ]
    inits = [w("Wq", 8, 16, dtype=np.int8), w("scale"), w("b", 16)]
    params = classify(nodes, inits, {"xq": ["N", 8]})
    assert params["Wq"].role is Role.QUANTIZED
    assert params["b"].role is Role.BIAS


# -- other sources -----------------------------------------------------------------------------


def test_constant_node_weight() -> None:
    weight = w("unused", 16, 8)
    nodes = [helper.make_node("Constant", [], ["W"], value=weight), node("Gemm", ["x", "W"], "y", transB=1)]
    params = classify(nodes, [])
    assert params["W"].role is Role.WEIGHT and params["W"].source == "constant_node"


def test_sparse_initializer_weight() -> None:
    values = numpy_helper.from_array(np.ones(3, np.float32), "W")
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "W_idx")
    sparse = helper.make_sparse_tensor(values, indices, [8, 4])
    params = classify([node("MatMul", ["x", "W"], "y")], [], sparse_initializer=[sparse])
    assert params["W"].role is Role.WEIGHT and params["W"].source == "sparse_initializer"
    assert params["W"].shape == (8, 4)


def test_subgraph_initializers_are_scoped_and_outer_names_resolved() -> None:
    then_graph = float_graph(
        [node("Gemm", ["x", "W"], "t", transB=1)], {}, {"t": None}, [w("W", 4, 8)], name="then"
    )
    else_graph = float_graph([node("Gemm", ["x", "Wouter"], "e", transB=1)], {}, {"e": None}, name="else")
    nodes = [
        node("ReduceSum", ["x"], "s", keepdims=0),
        node("Greater", ["s", "zero"], "cond"),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="branch"
        ),
    ]
    params = classify(nodes, [w("zero"), w("Wouter", 4, 8), w("W", 2, 2)])
    inner = params["branch/then_branch::W"]
    assert inner.role is Role.WEIGHT and inner.source == "subgraph_initializer" and inner.shape == (4, 8)
    assert params["Wouter"].role is Role.WEIGHT  # used only inside the else branch
    assert params["W"].role is Role.UNKNOWN  # the outer W is shadowed... and unused


def test_function_constants_and_call_site_inputs() -> None:
    body_weight = helper.make_node("Constant", [], ["Wf"], value=w("c", 4, 8))
    function = helper.make_function(
        "local",
        "Linear",
        ["inp", "weight"],
        ["out"],
        [body_weight, node("Gemm", ["inp", "weight"], "mid", transB=1), node("Gemm", ["mid", "Wf"], "out")],
        [helper.make_opsetid("", 17)],
    )
    call = helper.make_node("Linear", ["x", "W"], ["y"], domain="local")
    model = float_model([call], {"x": ["N", 8]}, {"y": None}, [w("W", 4, 8)], domains={"local": 1})
    model.functions.append(function)
    params = {p.name: p for p in classify_model(model)[0]}
    assert params["W"].role is Role.WEIGHT and "Linear() as weight" in params["W"].reason
    inner = params["local.Linear()::Wf"]
    assert inner.role is Role.WEIGHT and inner.source == "function_constant"
    assert fans(inner)[0] == (4, 8)  # Gemm transB=0: [in, out]


def test_graph_inputs_feed_parameter_slots_only() -> None:
    params = classify(
        [node("Conv", ["x", "W", "B"], "c"), node("Add", ["c", "mask"], "y")],
        [],
        {"x": [1, 3, 8, 8], "W": [4, 3, 3, 3], "B": [4], "mask": [1, 4, 6, 6]},
    )
    assert set(params) == {"W", "B"}
    assert not params["W"].has_data and params["W"].source == "graph_input"


def test_graph_input_without_static_shape_names_the_input() -> None:
    with pytest.raises(InputError, match=r"'W'.*no static shape"):
        classify([node("Conv", ["x", "W"], "y")], [], {"x": [1, 3, 8, 8], "W": ["M", 3, 3, 3]})


def test_training_info_bindings_define_the_learnable_set() -> None:
    model = float_model(
        [node("Gemm", ["x", "W1"], "h", transB=1), node("Gemm", ["h", "W2"], "y", transB=1)],
        {"x": ["N", 8]},
        {"y": None},
        [w("W1", 8, 8), w("W2", 4, 8)],
        opset=None,
    )
    info = model.training_info.add()
    binding = info.update_binding.add()
    binding.key, binding.value = "W1", "W1_new"
    params = {p.name: p for p in classify_model(model)[0]}
    assert params["W1"].role is Role.WEIGHT
    assert params["W2"].role is Role.CONSTANT and "training_info" in params["W2"].reason


def test_skip_layernorm_and_embed_layernorm() -> None:
    nodes = [
        node("SkipLayerNormalization", ["x", "x", "g", "b", "bias"], "y", domain="com.microsoft"),
    ]
    params = classify(nodes, [w("g", 8), w("b", 8), w("bias", 8)], ms=True)
    assert [params[k].role for k in ("g", "b", "bias")] == [Role.NORM_SCALE, Role.NORM_SHIFT, Role.BIAS]


def test_no_parameters_is_noted() -> None:
    params, notes = classify_model(
        float_model([node("Relu", ["x"], "y")], {"x": [1]}, {"y": [1]}, opset=None)
    )
    assert params == [] and any("nothing to re-initialize" in n for n in notes)


# -- Einsum '...' and repeated letters, MoE/QMoE, reshapes that merge or split axes ----------

EINSUM_CASES = {
    # equation, weight shape, role, semantic fans (None: UNKNOWN), words in the reason
    "weight without '...'": ("...d,de->...e", (8, 16), Role.WEIGHT, (8, 16), "Einsum input 1"),
    "'...' in the weight is batch": ("...ij,...jk->...ik", (4, 8, 16), Role.WEIGHT, (8, 16), "Einsum"),
    "'...' summed away is input": ("bd,...de->be", (3, 8, 16), Role.WEIGHT, (24, 16), "Einsum"),
    "implicit output": ("bd,de", (8, 16), Role.WEIGHT, (8, 16), "Einsum"),
    "repeated letter elsewhere is fine": ("bii,ij->bj", (8, 16), Role.WEIGHT, (8, 16), "Einsum"),
    "repeated letter in the weight": ("bi,jj->bj", (8, 8), Role.UNKNOWN, None, "letter 'j' repeats"),
    "rank mismatch": ("bd,de->be", (2, 8, 16), Role.UNKNOWN, None, "does not match the tensor's rank 3"),
}


@pytest.mark.parametrize("case", list(EINSUM_CASES), ids=list(EINSUM_CASES))
def test_einsum_ellipsis_and_repeated_letters(case: str) -> None:
    equation, shape, role, semantic, words = EINSUM_CASES[case]
    params = classify([node("Einsum", ["x", "W"], "y", equation=equation)], [w("W", *shape)])
    param = params["W"]
    assert param.role is role and words in param.reason, param.reason
    if semantic is not None:
        assert fans(param)[0] == semantic


def moe(fc1: tuple[int, ...], fc2: tuple[int, ...], hidden: int | None, **attrs: object) -> dict[str, Param]:
    return classify(
        [
            node(
                "MoE",
                ["x", "router", "fc1", "b1", "fc2", "b2"],
                "y",
                domain="com.microsoft",
                k=1,
                **attrs,
            )
        ],
        [w("fc1", *fc1), w("b1", fc1[0], 4), w("fc2", *fc2), w("b2", fc2[0], 4)],  # biases: no layout
        {"x": ["N", hidden if hidden is not None else "H"], "router": ["N", fc1[0]]},
        ms=True,
    )


def test_moe_experts_are_batched_out_in_matrices() -> None:
    # ORT >= 1.22: fc1 [E, inter, hidden], fc2 [E, hidden, inter]; hidden 8, inter 32, E 4.
    params = moe((4, 32, 8), (4, 8, 32), 8)
    assert params["fc1"].role is Role.WEIGHT and fans(params["fc1"]) == ((8, 32), (8, 32))
    assert params["fc2"].role is Role.WEIGHT and fans(params["fc2"]) == ((32, 8), (32, 8))
    assert params["fc1"].layout is not None and params["fc1"].layout.batch_axes == (0,)
    assert params["b1"].role is Role.BIAS and params["b2"].role is Role.BIAS


def test_moe_fused_swiglu_fc1_is_two_blocks() -> None:
    params = moe((4, 64, 8), (4, 8, 32), 8, activation_type="swiglu")
    layout = params["fc1"].layout
    assert layout is not None and (layout.out_divisor, layout.blocks) == (2, 2)
    assert fans(params["fc1"])[0] == (8, 32)


def test_moe_older_in_out_layout_is_recognised_by_shapes() -> None:
    params = moe((4, 8, 32), (4, 32, 8), 8)
    assert fans(params["fc1"]) == ((8, 32), (8, 32)) and fans(params["fc2"]) == ((32, 8), (32, 8))
    assert params["fc1"].layout is not None and params["fc1"].layout.label == "[experts, in, out]"


def test_moe_ambiguous_orientation_is_unknown() -> None:
    params = moe((4, 32, 8), (4, 8, 32), None)  # hidden size not declared: fits both
    assert params["fc1"].role is Role.UNKNOWN and "fit both" in params["fc1"].reason


def test_qmoe_weights_and_scales_are_quantized_biases_are_biases() -> None:
    inits = [
        numpy_helper.from_array(np.zeros((4, 32, 4), np.uint8), "q1"),
        w("s1", 4, 32),
        w("b1", 4, 32),
        numpy_helper.from_array(np.zeros((4, 8, 16), np.uint8), "q2"),
        w("s2", 4, 8),
        w("b2", 4, 8),
    ]
    params = classify(
        [node("QMoE", ["x", "router", "q1", "s1", "b1", "q2", "s2", "b2"], "y", domain="com.microsoft")],
        inits,
        {"x": ["N", 8], "router": ["N", 4]},
        ms=True,
    )
    assert {k: params[k].role for k in ("q1", "s1", "q2", "s2")} == dict.fromkeys(
        ("q1", "s1", "q2", "s2"), Role.QUANTIZED
    )
    assert params["b1"].role is Role.BIAS and params["b2"].role is Role.BIAS


def test_reshape_merging_axes_before_a_slot_keeps_the_fans() -> None:
    # A conv-shaped weight [out, in, k] flattened to [out, in·k] for Gemm(transB=1).
    params = classify(
        [node("Reshape", ["W", "shape"], "Wf"), node("Gemm", ["x", "Wf"], "y", transB=1)],
        [w("W", 16, 2, 4), i64("shape", [16, 8])],
    )
    param = params["W"]
    assert param.role is Role.WEIGHT and "Reshape([16, 2, 4]→[16, 8])" in param.reason
    assert param.layout is not None and param.layout.label == "[out, in, in]"
    # torch parity is computed on the stored [16, 2, 4] as torch would (a Conv1d-shaped tensor).
    assert fans(param) == ((8, 16), (8, 64))


def test_reshape_splitting_an_axis_before_einsum() -> None:
    # [in, heads·dim] split to [in, heads, dim]: both parts are outputs of 'bsd,dhe->bshe'.
    params = classify(
        [
            node("Reshape", ["W", "shape"], "W3"),
            node("Einsum", ["x", "W3"], "y", equation="bsd,dhe->bshe"),
        ],
        [w("W", 8, 12), i64("shape", [8, 3, 4])],
        {"x": ["B", "S", 8]},
    )
    assert params["W"].role is Role.WEIGHT and fans(params["W"])[0] == (8, 12)


def test_reshape_spreading_an_axis_over_input_and_output_is_unknown() -> None:
    # [in·out] → [in, out] for MatMul: one stored axis becomes both kinds: fans undecidable.
    params = classify(
        [node("Reshape", ["W", "shape"], "W2"), node("MatMul", ["x", "W2"], "y")],
        [w("W", 64), i64("shape", [8, 8])],
    )
    assert params["W"].role is Role.UNKNOWN
    assert "spreads stored axis 0 over input and output axes" in params["W"].reason


def test_training_info_bound_tensors_in_unrecognised_slots_fall_back_to_torch_convention() -> None:
    nodes = [
        node("Gemm", ["x", "W1"], "h", transB=1),
        node("Mul", ["h", "G"], "g"),  # [4, 8] in Mul: no slot says what it is
        node("Add", ["g", "s"], "y"),  # a scalar
    ]
    model = float_model(
        nodes, {"x": ["N", 8]}, {"y": None}, [w("W1", 8, 8), w("G", 4, 8), w("s")], opset=None
    )
    info = model.training_info.add()
    for key in ("W1", "G", "s"):
        binding = info.update_binding.add()
        binding.key, binding.value = key, key + "_new"
    params, notes = classify_model(model)
    by_name = {p.name: p for p in params}
    assert by_name["W1"].role is Role.WEIGHT and "training_info" not in by_name["W1"].reason
    assert by_name["G"].role is Role.WEIGHT and fans(by_name["G"])[0] == (8, 4)
    assert "bound by training_info" in by_name["G"].reason and "torch" in by_name["G"].reason
    assert by_name["s"].role is Role.BIAS
    assert sum("bound by training_info" in n for n in notes) == 2
