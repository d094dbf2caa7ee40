"""The script a user would otherwise write: load a safetensors bundle, re-initialize every tensor with
torch.nn.init, save it.  It is the yardstick netinit's speed is measured against, and it imports
torch, so it runs only in the benchmark's environment (torch is never a dependency of netinit).

    python bench/torch_script.py IN.safetensors OUT.safetensors --init kaiming_uniform --seed 1234
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from safetensors.torch import load_file, save_file

# The same choices netinit makes for a ReLU network: fan_in, gain sqrt(2).
INITS: dict[str, Callable[[torch.Tensor], object]] = {
    "kaiming_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, mode="fan_in", nonlinearity="relu"),
    "kaiming_normal": lambda t: torch.nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu"),
    "xavier_normal": torch.nn.init.xavier_normal_,
    "xavier_uniform": torch.nn.init.xavier_uniform_,
    "orthogonal": torch.nn.init.orthogonal_,
}
NORM_MARKERS = ("norm", "ln_")


def reinitialize(tensors: dict[str, torch.Tensor], init: Callable[[torch.Tensor], object]) -> None:
    """Matrices get ``init``; 1-D norm scales become 1 and every other vector (biases, shifts) 0."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            if tensor.ndim >= 2:
                init(tensor)
            elif name.endswith("weight") and any(m in name.lower() for m in NORM_MARKERS):
                torch.nn.init.ones_(tensor)
            else:
                torch.nn.init.zeros_(tensor)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--init", choices=sorted(INITS), default="kaiming_uniform")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tensors = load_file(args.source)
    reinitialize(tensors, INITS[args.init])
    save_file(tensors, args.destination, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
