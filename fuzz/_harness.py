"""Shared atheris harness: feed bytes to a netinit parser as a file, count exceptions that are
not :class:`NetinitError` as crashes (saved with their traceback, fuzzing goes on)."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

CRASH_DIR = Path(os.environ.get("NETINIT_FUZZ_CRASHES", "fuzz-crashes"))
STOP_ON_CRASH = os.environ.get("NETINIT_FUZZ_STOP") == "1"
_seen: set[str] = set()


def make_target(parse: Callable[[Path], object], suffix: str) -> Callable[[bytes], None]:
    from netinit_cli.errors import NetinitError

    folder = Path(tempfile.mkdtemp(prefix="netinit-fuzz-"))
    path = folder / f"model{suffix}"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        try:
            parse(path)
        except NetinitError:
            pass
        except Exception as exc:  # a crash: anything but our own one-line errors
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}"
            if key not in _seen:
                _seen.add(key)
                CRASH_DIR.mkdir(parents=True, exist_ok=True)
                name = hashlib.sha256(data).hexdigest()[:16]
                (CRASH_DIR / f"crash-{name}{suffix}").write_bytes(data)
                (CRASH_DIR / f"crash-{name}.txt").write_text(key + "\n" + traceback.format_exc())
                print(f"NETINIT-CRASH {key}", file=sys.stderr, flush=True)
            if STOP_ON_CRASH:
                raise

    return target
