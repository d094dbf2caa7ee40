"""Issue 16 figures: a config.json template (``formats/safetensors/hf_template.py``) against ``from_config`` + ``save_pretrained``.

``make bench`` (bench/run.py) runs ``netinit --like config.json -o OUTDIR`` end to end against this script's
``save`` case and ``import`` case (:func:`hf_cases`); run alone, it measures the template step by itself:

Every case runs in a fresh subprocess that measures itself: the time to import torch and transformers
(including the lazily imported modules of the model class, which otherwise land inside the first call),
the time of the work after that, and the process's peak RSS (``ru_maxrss``) once after the imports and
once at the end.  Cases:

- ``save``: ``AutoModelForCausalLM.from_config(config)`` + ``save_pretrained`` of a ~1.1B LLaMA-shaped
  config in bf16 (what users do today; the output goes to a temporary folder, deleted afterwards);
- ``template``: ``load_template`` of the same config (names, shapes, dtypes, ties, buffers, shard split);
- ``template-7b``: ``load_template`` of a LLaMA-7B-shaped config.

    .venv/bin/python bench/hf_config_bench.py [--reps 1] [--skip-save] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LLAMA_1B = {  # TinyLlama-1.1B's shape: 1,100,048,384 parameters
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
LLAMA_7B = {
    **LLAMA_1B,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(case: str, config_dir: str, out_dir: str) -> None:
    """Runs in the subprocess; prints one JSON line."""
    start = time.perf_counter()
    import torch  # noqa: F401
    import transformers
    import transformers.core_model_loading
    import transformers.modeling_utils

    # transformers imports lazily: touching the classes this config needs loads their modules now, so that
    # "work" below is the work itself in both cases.
    architecture = json.loads((Path(config_dir) / "config.json").read_text(encoding="utf-8"))[
        "architectures"
    ][0]
    getattr(transformers, architecture)
    transformers.AutoModelForCausalLM  # noqa: B018

    imported = time.perf_counter()
    rss_after_import = peak_rss_mb()
    result: dict[str, Any] = {}
    if case == "import":
        pass
    elif case == "save":
        config = transformers.AutoConfig.from_pretrained(config_dir)
        model = transformers.AutoModelForCausalLM.from_config(config)
        built = time.perf_counter()
        model.save_pretrained(out_dir)
        result["build_s"] = built - imported
        result["parameters"] = model.num_parameters()
    else:
        from netinit_cli.formats.safetensors.hf_template import load_template

        template = load_template(Path(config_dir))
        result["tensors"] = len(template.tensors)
        result["bytes"] = sum(t.storage_bytes for t in template.tensors)
        result["parameters"] = template.total_parameters
    done = time.perf_counter()
    result.update(
        import_s=imported - start,
        work_s=done - imported,
        rss_import_mb=rss_after_import,
        rss_peak_mb=peak_rss_mb(),
    )
    print(json.dumps(result))


def parameters(config: dict[str, Any]) -> int:
    """A LLaMA-shaped config's parameter count (biases none, norms 2 per layer + 1)."""
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = hidden * config["num_key_value_heads"] // config["num_attention_heads"]
    tables = config["vocab_size"] * hidden * (1 if config["tie_word_embeddings"] else 2)
    return (
        tables + layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden) + hidden
    )


def config_dataset(key: str, config: dict[str, Any], data_root: Path, dataset: Any) -> Any:
    """bench/run.py's Dataset for a config folder under ``data_root`` (``dataset``: its class)."""
    folder = data_root / key
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2) + "\n"
    if not (folder / "config.json").exists() or (folder / "config.json").read_text() != text:
        (folder / "config.json").write_text(text, encoding="utf-8")
    count = parameters(config)
    largest = config["vocab_size"] * config["hidden_size"] * 2
    return dataset(key, folder, folder / "config.json", count, largest, count * 2)


def run_case(case: str, config: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hfbench-") as tmp:
        config_dir = Path(tmp) / "config"
        config_dir.mkdir()
        (config_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
        out_dir = Path(tmp) / "out"
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", case, str(config_dir), str(out_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.perf_counter() - started
        if out_dir.exists():
            result["written_bytes"] = sum(path.stat().st_size for path in out_dir.iterdir())
            shutil.rmtree(out_dir)
        return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--skip-save", action="store_true", help="skip the slow from_config + save_pretrained case"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "CONFIG_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    cases = [("template", LLAMA_1B), ("template-7b", LLAMA_7B)]
    if not args.skip_save:
        cases.insert(0, ("save", LLAMA_1B))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in cases}
    for _ in range(args.reps):  # the cases alternate within each repetition
        for name, config in cases:
            runs[name].append(run_case(name, config))
    results = {name: median_of(case_runs) for name, case_runs in runs.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return

    print(f"median of {args.reps} run(s); each a fresh subprocess; RSS = ru_maxrss of that process")
    print(
        "| case | import torch+transformers | work after imports | wall | peak RSS after imports | peak RSS |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['import_s']:.2f} s | {r['work_s']:.2f} s | {r['wall_s']:.2f} s "
            f"| {r['rss_import_mb']:.0f} MB | {r['rss_peak_mb']:.0f} MB |"
        )
    if "save" in results:
        save, template = results["save"], results["template"]
        print(
            f"\ntemplate / save (1.1B bf16): work {template['work_s'] / save['work_s']:.3f}×, "
            f"wall {template['wall_s'] / save['wall_s']:.3f}×, peak RSS {template['rss_peak_mb'] / save['rss_peak_mb']:.3f}×"
            f"  (save: build {save['build_s']:.1f} s, wrote {save['written_bytes'] / 1e9:.2f} GB)"
        )
    print(f"7B-shaped template peak RSS: {results['template-7b']['rss_peak_mb']:.0f} MB (goal < 1024 MB)")


if __name__ == "__main__":
    main()
