"""The batch LSUV measures on: arrays from ``--data`` (``.npz`` or ``.npy``) or a seeded normal draw.

Every array is checked against the graph input it feeds (name, rank, static dimensions, dtype)
before onnxruntime sees it, so a mismatch is one line naming the input, not an ORT stack trace.
Dimensions that share a symbolic name (``batch``) must agree across inputs.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
import onnx

from netinit_cli.errors import UsageError
from netinit_cli.inputfile import open_regular

# Inputs a standard-normal batch can be drawn for; anything else (token ids, masks) needs --data.
_DRAWABLE: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"

# One graph dimension: an int (static), a str (symbolic name) or None (unnamed dynamic).
Dim = int | str | None


def graph_inputs(model: onnx.ModelProto, parameters: Collection[str] = ()) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs without an initializer of the same name, and not in
    ``parameters`` (weights declared as inputs, which netinit fills: ``export_params=False``)."""
    stored = {tensor.name for tensor in model.graph.initializer} | set(parameters)
    return [value for value in model.graph.input if value.name not in stored]


def input_dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    """The declared dimensions of a graph input, or None when it declares no shape."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return dims


def _dtype_name(elem_type: int) -> str:
    return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _input_numpy_dtype(value: onnx.ValueInfoProto) -> np.dtype | None:
    elem_type = value.type.tensor_type.elem_type
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _sequence(seed: int | np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """A child stream per input, derived without ``spawn`` (which would mutate the caller's object)."""
    parent = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.SeedSequence(parent.entropy, spawn_key=(*parent.spawn_key, index))


def random_batch(
    inputs: list[onnx.ValueInfoProto], batch_size: int, seed: int | np.random.SeedSequence
) -> dict[str, np.ndarray]:
    """A standard-normal batch for every float input; ``batch_size`` fills a dynamic first axis."""
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is not positive, give at least 1 (default 16)")
    batch: dict[str, np.ndarray] = {}
    for index, value in enumerate(inputs):
        dtype = _DRAWABLE.get(value.type.tensor_type.elem_type)
        if dtype is None:
            raise UsageError(
                f"input {value.name!r} is {_dtype_name(value.type.tensor_type.elem_type)}, "
                "which cannot be drawn at random, give its values with --data FILE.npz"
            )
        dims = input_dims(value)
        if dims is None:
            raise UsageError(f"input {value.name!r} declares no shape, give its values with --data FILE.npz")
        shape: list[int] = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0:
                shape.append(batch_size)
            else:
                raise UsageError(
                    f"input {value.name!r} has dynamic dimension {axis} ({dim or 'unnamed'}), "
                    "only the first axis takes --batch-size, give the values with --data FILE.npz"
                )
        generator = np.random.Generator(np.random.PCG64DXSM(_sequence(seed, index)))
        batch[value.name] = generator.standard_normal(shape, dtype=np.float64).astype(dtype)
    return batch


def read_data(path: str | os.PathLike[str], inputs: list[onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    """Arrays from an ``.npz`` (named by graph input) or ``.npy`` (one-input model), by content."""
    path = Path(path)
    names = [value.name for value in inputs]
    try:
        with open_regular(path, f"--data {path}") as handle:  # a FIFO or device: refused, not read
            magic = handle.read(6)
            handle.seek(0)
            if magic.startswith(_ZIP_MAGIC):
                with np.load(handle, allow_pickle=False) as archive:
                    arrays = {key: archive[key] for key in archive.files}
            elif magic == _NPY_MAGIC:
                if len(names) != 1:
                    raise UsageError(
                        f"--data {path} is one .npy array but the model has {len(names)} inputs "
                        f"({', '.join(names)}), save them in an .npz named by input (np.savez)"
                    )
                arrays = {names[0]: np.load(handle, allow_pickle=False)}
            else:
                raise UsageError(
                    f"--data {path} is neither .npz nor .npy, save the batch with np.savez or np.save"
                )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror
        else:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"--data {path} cannot be read ({reason}), save it with np.savez or np.save"
        ) from None
    return arrays


def check_batch(
    inputs: list[onnx.ValueInfoProto], batch: dict[str, np.ndarray], source: str
) -> dict[str, np.ndarray]:
    """Check names, ranks, static dimensions and dtypes against the graph inputs; return the feeds."""
    names = [value.name for value in inputs]
    for key in batch:
        if key not in names:
            raise UsageError(
                f"{source} has an array {key!r} that is no graph input, "
                f"name the arrays by input ({', '.join(names) or 'none'})"
            )
    symbols: dict[str, tuple[int, str]] = {}
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        array = batch.get(value.name)
        if array is None:
            raise UsageError(
                f"{source} has no array for input {value.name!r}, add it (np.savez(..., {value.name}=x))"
            )
        expected = _input_numpy_dtype(value)
        if expected is None or array.dtype != expected:
            wanted = _dtype_name(value.type.tensor_type.elem_type)
            raise UsageError(
                f"{source}: input {value.name!r} is {array.dtype} but the model wants {wanted}, "
                f"convert it (x.astype({wanted!r}))"
            )
        dims = input_dims(value)
        if dims is not None:
            if array.ndim != len(dims):
                raise UsageError(
                    f"{source}: input {value.name!r} has {array.ndim} dimensions {list(array.shape)} "
                    f"but the model wants {len(dims)} {[d if isinstance(d, int) else '?' for d in dims]}, reshape it"
                )
            for axis, (dim, size) in enumerate(zip(dims, array.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    raise UsageError(
                        f"{source}: input {value.name!r} has size {size} on axis {axis} "
                        f"but the model wants {dim}, reshape or crop it"
                    )
                if isinstance(dim, str):
                    seen = symbols.setdefault(dim, (size, value.name))
                    if seen[0] != size:
                        raise UsageError(
                            f"{source}: dimension {dim!r} is {seen[0]} in input {seen[1]!r} but {size} "
                            f"in input {value.name!r}, give them the same size"
                        )
        if array.size == 0:
            raise UsageError(
                f"{source}: input {value.name!r} is empty {list(array.shape)}, give at least one sample"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UsageError(f"{source}: input {value.name!r} holds NaN or inf, give finite values")
        feeds[value.name] = np.ascontiguousarray(array)
    return feeds


def load_batch(
    model: onnx.ModelProto,
    data_path: str | os.PathLike[str] | None,
    batch_size: int = 16,
    seed: int | np.random.SeedSequence = 0,
    *,
    parameters: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """The checked feeds for every graph input (but ``parameters``): ``data_path``'s arrays, or a
    seeded normal batch.

    ``seed`` seeds a private generator (PCG64DXSM) per input, its ``i``-th child for input ``i``;
    the global numpy RNG is never used.
    """
    inputs = graph_inputs(model, parameters)
    if data_path is None:
        return check_batch(inputs, random_batch(inputs, batch_size, seed), "the random batch")
    return check_batch(inputs, read_data(data_path, inputs), f"--data {Path(data_path).name}")
