"""Build the benchmark inputs once and reuse them: transformer-shaped safetensors bundles and ONNX models.

Every file is written as raw bytes (no torch, no onnx external-data saver, which runs at ~0.3 GB/s):
a safetensors file is an 8-byte header length, a JSON header and the data; an ONNX model is a small
protobuf whose initializers point into a ``.data`` file beside it.

Each dataset lives in its own folder under ``bench/data/`` with a ``spec.json``; a folder whose
spec.json matches the requested spec (and whose files have the recorded sizes) is reused as is.

Run ``python bench/make_data.py [--quick] [--big]`` to build them without running the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

DATA_ROOT = Path(__file__).resolve().parent / "data"
FLOAT32_BYTES = 4
# Values written per generator call: 16 MiB keeps the builder's memory small.
CHUNK_VALUES = 4 * 1024 * 1024
SHARD_BYTES_TARGET = 512 * 1000 * 1000
ITEMSIZE = {"F32": 4, "BF16": 2}
# ONNX external data: each tensor starts on a page boundary so readers can memory-map it.
ONNX_ALIGNMENT = 4096


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.count * FLOAT32_BYTES


@dataclass(frozen=True)
class Sizes:
    """A transformer's widths: matrices are [intermediate, hidden] or [hidden, intermediate]."""

    hidden: int
    intermediate: int
    llama_layers: int  # LLaMA MLP blocks (gate/up/down, two RMSNorms, no biases)
    bert_layers: int  # BERT FFN blocks (Linear with .bias, LayerNorm weight and bias)


FULL = Sizes(hidden=4096, intermediate=2816, llama_layers=7, bert_layers=1)  # 23 matrices, 0.99 GiB
SHARDED = Sizes(hidden=4096, intermediate=2816, llama_layers=14, bert_layers=0)  # 42 matrices, 1.94 GB
QUICK = Sizes(hidden=2048, intermediate=1408, llama_layers=2, bert_layers=1)  # 8 matrices, 92 MB
QUICK_SHARDED = Sizes(hidden=2048, intermediate=1408, llama_layers=4, bert_layers=0)
ONNX_BLOCKS = 11  # 22 matrices + the Gemm head: ~1.06 GB like the safetensors bundle
ONNX_BIG_BLOCKS = 32  # 65 matrices: ~3.0 GB
QUICK_ONNX_BLOCKS = 3


def transformer_tensors(sizes: Sizes) -> list[Tensor]:
    """LLaMA-style MLP layers and BERT-style FFN layers, named as in transformers' checkpoints."""
    h, i = sizes.hidden, sizes.intermediate
    tensors: list[Tensor] = []
    for n in range(sizes.llama_layers):
        p = f"model.layers.{n}"
        tensors += [
            Tensor(f"{p}.input_layernorm.weight", (h,)),
            Tensor(f"{p}.mlp.gate_proj.weight", (i, h)),
            Tensor(f"{p}.mlp.up_proj.weight", (i, h)),
            Tensor(f"{p}.mlp.down_proj.weight", (h, i)),
            Tensor(f"{p}.post_attention_layernorm.weight", (h,)),
        ]
    if sizes.llama_layers:
        tensors.append(Tensor("model.norm.weight", (h,)))
    for n in range(sizes.bert_layers):
        p = f"bert.encoder.layer.{n}"
        tensors += [
            Tensor(f"{p}.intermediate.dense.weight", (i, h)),
            Tensor(f"{p}.intermediate.dense.bias", (i,)),
            Tensor(f"{p}.output.dense.weight", (h, i)),
            Tensor(f"{p}.output.dense.bias", (h,)),
            Tensor(f"{p}.output.LayerNorm.weight", (h,)),
            Tensor(f"{p}.output.LayerNorm.bias", (h,)),
        ]
    return tensors


def _chunks(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    """Plausible trained-looking values (uniform, std 0.02), a chunk at a time."""
    buf = np.empty(min(count, CHUNK_VALUES), dtype=np.float32)
    done = 0
    while done < count:
        part = buf[: min(CHUNK_VALUES, count - done)]
        rng.random(out=part, dtype=np.float32)
        part -= 0.5
        part *= 0.07
        yield part
        done += len(part)


def write_safetensors(path: Path, tensors: list[Tensor], rng: np.random.Generator, dtype: str = "F32") -> int:
    """Write one safetensors file (header + contiguous data); return its size in bytes.
    ``dtype`` F32, or BF16 (the float32 values rounded, as most released LLM checkpoints are)."""
    itemsize = ITEMSIZE[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        nbytes = t.count * itemsize
        header[t.name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors:
            for chunk in _chunks(rng, t.count):
                f.write((chunk if dtype == "F32" else chunk.astype(ml_dtypes.bfloat16)).tobytes())
    return 8 + len(text) + offset


def write_sharded(folder: Path, tensors: list[Tensor], rng: np.random.Generator, shard_bytes: int) -> int:
    """Split like transformers' save_pretrained: fill each shard up to shard_bytes, then an index."""
    shards: list[list[Tensor]] = [[]]
    for t in tensors:
        if shards[-1] and sum(x.nbytes for x in shards[-1]) + t.nbytes > shard_bytes:
            shards.append([])
        shards[-1].append(t)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, shard, rng)
        weight_map.update({t.name: name for t in shard})
    total = sum(t.nbytes for t in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def onnx_tensors(hidden: int, intermediate: int, blocks: int) -> list[Tensor]:
    """Initializers of an MLP chain: per block MatMul up, Relu, MatMul down, residual Add, LayerNorm;
    then a Gemm head (transB=1, so its weight is [out, in] like a torch Linear) with a bias."""
    tensors: list[Tensor] = []
    for b in range(blocks):
        tensors += [
            Tensor(f"blocks.{b}.up.weight", (hidden, intermediate)),
            Tensor(f"blocks.{b}.down.weight", (intermediate, hidden)),
            Tensor(f"blocks.{b}.norm.weight", (hidden,)),
            Tensor(f"blocks.{b}.norm.bias", (hidden,)),
        ]
    tensors += [Tensor("head.weight", (intermediate, hidden)), Tensor("head.bias", (intermediate,))]
    return tensors


def write_onnx(path: Path, hidden: int, intermediate: int, blocks: int, rng: np.random.Generator) -> int:
    """Write ``path`` (graph only) and ``path.data`` (raw little-endian float32, page-aligned)."""
    import onnx
    from onnx import TensorProto, helper

    tensors = onnx_tensors(hidden, intermediate, blocks)
    data_path = path.with_name(path.name + ".data")
    initializers = []
    with open(data_path, "wb") as f:
        for t in tensors:
            f.write(b"\0" * (-f.tell() % ONNX_ALIGNMENT))
            offset = f.tell()
            for chunk in _chunks(rng, t.count):
                f.write(chunk.tobytes())
            init = TensorProto(name=t.name, data_type=TensorProto.FLOAT, dims=list(t.shape))
            init.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", offset), ("length", t.nbytes)):
                entry = init.external_data.add()
                entry.key, entry.value = key, str(value)
            initializers.append(init)
        data_size = f.tell()

    nodes = []
    x = "input"
    for b in range(blocks):
        p = f"blocks.{b}"
        nodes += [
            helper.make_node("MatMul", [x, f"{p}.up.weight"], [f"{p}.h"], name=f"{p}.up"),
            helper.make_node("Relu", [f"{p}.h"], [f"{p}.a"], name=f"{p}.relu"),
            helper.make_node("MatMul", [f"{p}.a", f"{p}.down.weight"], [f"{p}.y"], name=f"{p}.down"),
            helper.make_node("Add", [f"{p}.y", x], [f"{p}.r"], name=f"{p}.residual"),
            helper.make_node(
                "LayerNormalization",
                [f"{p}.r", f"{p}.norm.weight", f"{p}.norm.bias"],
                [f"{p}.out"],
                name=f"{p}.norm",
                axis=-1,
                epsilon=1e-5,
            ),
        ]
        x = f"{p}.out"
    nodes.append(helper.make_node("Gemm", [x, "head.weight", "head.bias"], ["logits"], name="head", transB=1))
    graph = helper.make_graph(
        nodes,
        "bench_mlp_chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", intermediate])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="netinit-bench"
    )
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))  # by path: checks the external-data references too
    return path.stat().st_size + data_size


@dataclass(frozen=True)
class Dataset:
    """One built input: ``model`` is what netinit is given; ``spec`` decides whether to rebuild."""

    key: str
    folder: Path
    model: Path
    float_values: int  # float32 values in the bundle, which --all regenerates
    largest_tensor_bytes: int
    total_bytes: int


def _build(key: str, spec: dict[str, object], model_name: str, writer: object, root: Path) -> Dataset:
    folder = root / key
    spec_file = folder / "spec.json"
    if spec_file.exists():
        recorded = json.loads(spec_file.read_text())
        files_ok = all(
            (folder / name).exists() and (folder / name).stat().st_size == size
            for name, size in recorded["files"].items()
        )
        if recorded["spec"] == spec and files_ok:
            return _dataset(key, folder, model_name, recorded)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"bench: building {folder} ...", flush=True)
    stats = writer(folder)  # type: ignore[operator]
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    recorded = {"spec": spec, "files": files, **stats}
    spec_file.write_text(json.dumps(recorded, indent=2) + "\n")
    return _dataset(key, folder, model_name, recorded)


def _dataset(key: str, folder: Path, model_name: str, recorded: dict[str, object]) -> Dataset:
    return Dataset(
        key=key,
        folder=folder,
        model=folder / model_name,
        float_values=int(recorded["float_values"]),  # type: ignore[call-overload]
        largest_tensor_bytes=int(recorded["largest_tensor_bytes"]),  # type: ignore[call-overload]
        total_bytes=sum(recorded["files"].values()),  # type: ignore[attr-defined]
    )


def _stats(tensors: list[Tensor], itemsize: int = FLOAT32_BYTES) -> dict[str, int]:
    return {
        "float_values": sum(t.count for t in tensors),
        "largest_tensor_bytes": max(t.count for t in tensors) * itemsize,
    }


def bundle(quick: bool, root: Path = DATA_ROOT) -> Dataset:
    """The ~1 GiB single-file safetensors bundle (92 MB with quick)."""
    sizes = QUICK if quick else FULL
    tensors = transformer_tensors(sizes)
    key = "quick-bundle" if quick else "bundle"

    def writer(folder: Path) -> dict[str, int]:
        write_safetensors(folder / "model.safetensors", tensors, np.random.default_rng(1))
        return _stats(tensors)

    return _build(key, {"kind": "safetensors", **asdict(sizes)}, "model.safetensors", writer, root)


def bf16_bundle(quick: bool, root: Path = DATA_ROOT) -> Dataset:
    """The same tensors as :func:`bundle`, stored as bfloat16 (0.53 GB; 46 MB with quick)."""
    sizes = QUICK if quick else FULL
    tensors = transformer_tensors(sizes)
    key = "quick-bf16-bundle" if quick else "bf16-bundle"

    def writer(folder: Path) -> dict[str, int]:
        write_safetensors(folder / "model.safetensors", tensors, np.random.default_rng(1), dtype="BF16")
        return _stats(tensors, ITEMSIZE["BF16"])

    spec = {"kind": "safetensors", "dtype": "BF16", **asdict(sizes)}
    return _build(key, spec, "model.safetensors", writer, root)


def sharded(quick: bool, root: Path = DATA_ROOT) -> Dataset:
    """The ~2 GB sharded bundle: shards of <= 512 MB and model.safetensors.index.json."""
    sizes = QUICK_SHARDED if quick else SHARDED
    shard_bytes = SHARD_BYTES_TARGET // 8 if quick else SHARD_BYTES_TARGET
    tensors = transformer_tensors(sizes)
    key = "quick-sharded" if quick else "sharded"

    def writer(folder: Path) -> dict[str, int]:
        write_sharded(folder, tensors, np.random.default_rng(2), shard_bytes)
        return _stats(tensors)

    spec = {"kind": "sharded", "shard_bytes": shard_bytes, **asdict(sizes)}
    return _build(key, spec, "model.safetensors.index.json", writer, root)


def onnx_model(quick: bool, big: bool = False, root: Path = DATA_ROOT) -> Dataset:
    """An ONNX MLP chain with external data: ~1.06 GB, ~3.0 GB with big, 40 MB with quick."""
    sizes = QUICK if quick else FULL
    blocks = QUICK_ONNX_BLOCKS if quick else (ONNX_BIG_BLOCKS if big else ONNX_BLOCKS)
    tensors = onnx_tensors(sizes.hidden, sizes.intermediate, blocks)
    key = ("quick-" if quick else "") + ("onnx-big" if big else "onnx")

    def writer(folder: Path) -> dict[str, int]:
        write_onnx(folder / "model.onnx", sizes.hidden, sizes.intermediate, blocks, np.random.default_rng(3))
        return _stats(tensors)

    spec = {"kind": "onnx", "hidden": sizes.hidden, "intermediate": sizes.intermediate, "blocks": blocks}
    return _build(key, spec, "model.onnx", writer, root)


def fixture(key: str, path: Path) -> Dataset:
    """A committed fixture used as is (the start-up cases): nothing to build."""
    if path.suffix == ".onnx":
        import onnx

        floats = {
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
            onnx.TensorProto.DOUBLE,
        }
        model = onnx.load(str(path))
        counts = [
            int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if t.data_type in floats
        ]
    else:
        (size,) = struct.unpack("<Q", path.read_bytes()[:8])
        header = json.loads(path.read_bytes()[8 : 8 + size])
        counts = [
            int(np.prod(v["shape"], dtype=np.int64))
            for k, v in header.items()
            if k != "__metadata__" and v["dtype"] in ("F16", "BF16", "F32", "F64")
        ]
    return Dataset(
        key=key,
        folder=path.parent,
        model=path,
        float_values=sum(counts),
        largest_tensor_bytes=max(counts) * FLOAT32_BYTES,
        total_bytes=path.stat().st_size,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small smoke-test inputs")
    parser.add_argument("--big", action="store_true", help="also the ~3 GB ONNX model")
    parser.add_argument("--root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    datasets = [
        bundle(args.quick, args.root),
        bf16_bundle(args.quick, args.root),
        sharded(args.quick, args.root),
        onnx_model(args.quick, root=args.root),
    ]
    if args.big:
        datasets.append(onnx_model(args.quick, big=True, root=args.root))
    for d in datasets:
        print(f"{d.key:14} {d.total_bytes / 1e9:6.2f} GB  {d.float_values:>11,} values  {d.model}")
    os.sync()


if __name__ == "__main__":
    main()
