"""Every named layout, once: which axes of a stored tensor are in, out, batch or receptive field.

Both classifiers use these; a layout that depends on a tensor's shape or on the graph around it
(grouped or depthwise convolutions, packed gates, MoE orientation) is built from them where it is
decided.
"""

from __future__ import annotations

from dataclasses import replace

from netinit_cli.model import Layout

# PyTorch Linear, ONNX Gemm with transB=1.
LINEAR_OUT_IN = Layout((1,), (0,), label="[out, in]")
# ``x @ W``: ONNX MatMul B, Gemm B, GPT-2 Conv1D, Flax/Keras Dense.  torch would store it [out, in].
MATRIX_IN_OUT = Layout((0,), (1,), torch_perm=(1, 0), label="[in, out]")
# Gemm A with transA=1, stored [K, M]; torch's fan formula reads it as it is stored.
GEMM_A_TRANSPOSED = Layout((0,), (1,), label="[in, out]")
# com.microsoft Attention's packed weights [in, 3·hidden].
ATTENTION_QKV = replace(MATRIX_IN_OUT, label="[in, q+k+v]")
EMBEDDING_LAYOUT = Layout((1,), (0,), label="[vocab, dim]")
# Mixture-of-experts stacks keep the expert axis as a batch axis.
MOE_IN_OUT = Layout((1,), (2,), batch_axes=(0,), torch_perm=(1, 0), label="[experts, in, out]")
MOE_OUT_IN = Layout((2,), (1,), batch_axes=(0,), label="[experts, out, in]")
# torch's own assumption (torch.nn.init._calculate_fan_in_and_fan_out): [out, in, k…].
TORCH_CONVENTION = Layout((1,), (0,), label="[out, in, k…] (torch convention, assumed)")


def conv_layout(rank: int, groups: int = 1) -> Layout:
    """Conv weight ``[out, in/g, k…]``: the out axis holds all outputs, split in ``groups``."""
    return Layout((1,), (0,), out_divisor=groups, label="[out, in/g, k…]" if rank > 2 else "[out, in]")


def conv_transpose_layout(rank: int, groups: int = 1) -> Layout:
    """ConvTranspose weight ``[in, out/g, k…]``: the in axis holds all inputs."""
    return Layout((0,), (1,), in_divisor=groups, torch_perm=None, label="[in, out/g, k…]")
