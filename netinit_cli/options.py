"""Run options from their user-level forms: the command line's strings, a TOML ``--config`` file,
and the ``--like CONFIG`` settings.  Everything here is checked and typed before any file is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netinit_cli.errors import UsageError
from netinit_cli.formats import ConfigOptions
from netinit_cli.inputfile import read_regular
from netinit_cli.methods import MethodSpec, parse_method
from netinit_cli.plan import Options, Rule, make_rule, parse_rule
from netinit_cli.seeding import Seed, parse_seed

if TYPE_CHECKING:
    from netinit_cli.presets import PresetSpec

FAN_MODES = ("semantic", "torch")


def build_options(
    *,
    method: str | MethodSpec | None = None,
    preset: str | PresetSpec | None = None,
    seed: str | int | Seed | None = None,
    all: bool = False,
    fan_mode: str = "semantic",
    rules: Sequence[str | Rule] = (),
    config: str | os.PathLike[str] | None = None,
    method_options: Mapping[str, str | None] | None = None,
    default_preset: str | None = None,
) -> Options:
    """Turn user-level values (strings, as on the command line) into planning options.

    ``default_preset`` applies when nothing chose a method or preset (no method, preset, method
    sub-option or torch fan mode, here or in the config file): ``hf`` for a new model from a
    transformers config (:func:`default_preset_for`).

    ``method`` defaults to kaiming; ``preset`` (``"hf"``, ``"torch"``, …, see
    :mod:`netinit_cli.presets`) replaces it: giving both, a method sub-option, or a torch fan
    mode with a preset is a :class:`UsageError`.  A config file (TOML) supplies defaults: keys
    ``method`` or ``preset``, ``seed``, ``all``, ``fan_mode`` and a ``[rules]`` table of
    ``"GLOB" = "SPEC"``.  Explicit arguments win over the file (a method given here replaces the
    file's preset, and the other way round); rules given here come before the file's rules (the
    first matching rule wins).
    """
    file_rules: list[Rule] = []
    seed_option = "--seed"
    if config is not None:
        settings = load_config(Path(config))
        if method is None and preset is None:
            method, preset = settings.get("method"), settings.get("preset")
        if seed is None and "seed" in settings:
            seed, seed_option = settings["seed"], f"--config {config}: seed"
        all = settings.get("all", False) or all
        fan_mode = settings.get("fan_mode", fan_mode) if fan_mode == "semantic" else fan_mode
        for pattern, spec in settings.get("rules", {}).items():
            file_rules.append(make_rule(str(pattern), str(spec), origin=f"{config} [rules]"))
    if fan_mode not in FAN_MODES:
        raise UsageError(f"--fan-mode {fan_mode!r}: choose one of {', '.join(FAN_MODES)}")
    chosen = any(value is not None for value in (method_options or {}).values()) or fan_mode != "semantic"
    if method is None and preset is None and not chosen:
        preset = default_preset
    preset_spec = None
    if preset is not None:
        from netinit_cli.presets import PresetSpec, parse_preset  # only for a preset run

        preset_spec = preset if isinstance(preset, PresetSpec) else parse_preset(str(preset))
        _check_preset_alone(preset_spec, method, method_options or {}, fan_mode)
    if method is None:
        method = "kaiming"
    spec = method if isinstance(method, MethodSpec) else parse_method(str(method), method_options or {})
    seed_value = seed if isinstance(seed, Seed) else parse_seed(seed, option=seed_option)
    parsed_rules = tuple(rule if isinstance(rule, Rule) else parse_rule(rule) for rule in rules)
    return Options(
        method=spec,
        seed=seed_value,
        all=all,
        fan_mode=fan_mode,
        rules=parsed_rules + tuple(file_rules),
        preset=preset_spec,
    )


def default_preset_for(
    model: str | os.PathLike[str] | None, like: str | os.PathLike[str] | None
) -> str | None:
    """``hf`` for a new model from a transformers config (what ``from_config`` would give), else None."""
    from netinit_cli.formats import is_config_template

    return "hf" if model is None and like is not None and is_config_template(Path(like)) else None


def _check_preset_alone(
    preset: PresetSpec, method: object, method_options: Mapping[str, str | None], fan_mode: str
) -> None:
    """A preset decides every formula and its framework's fans: nothing of a method may come with it."""
    if method is not None:
        raise UsageError(
            f"--preset {preset} and --method are exclusive: a preset sets every tensor's formula; "
            "use --rule 'GLOB=METHOD' for exceptions"
        )
    flags = ["--" + key.replace("_", "-") for key, value in method_options.items() if value is not None]
    if flags:
        raise UsageError(
            f"{flags[0]} is a --method sub-option and does not apply with --preset {preset}; "
            "change a preset's constants with its own options, e.g. --preset 'hf(initializer_range=0.01)'"
        )
    if fan_mode != "semantic":
        raise UsageError(
            f"--fan-mode {fan_mode} does not apply with --preset {preset}: each preset uses its "
            "framework's own fans (the init column names them)"
        )


CONFIG_KEYS = {"method", "preset", "seed", "all", "fan_mode", "rules"}
CONFIG_LIMIT = 1 << 20  # bytes; a config is a few lines, a [rules] table a few hundred


def load_config(path: Path) -> dict[str, Any]:
    """Read a ``--config`` TOML file: known keys only, each of its own type (``all`` a boolean,
    ``seed`` an integer or a string, ``method``, ``preset`` and ``fan_mode`` strings, ``[rules]``
    a table of strings); anything else is a :class:`UsageError` naming the key."""
    import tomllib

    where = f"--config {path}"
    data = read_regular(path, where, CONFIG_LIMIT, "a config file")
    try:
        settings = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where}: not UTF-8 text (byte {exc.start + 1}); a config file is TOML text"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(settings) - CONFIG_KEYS)
    if unknown:
        shown_keys = ", ".join(repr(key) if len(key) <= 40 else repr(key[:39] + "…") for key in unknown[:5])
        raise UsageError(f"{where}: unknown key(s) {shown_keys}; known: {', '.join(sorted(CONFIG_KEYS))}")
    for key, value in settings.items():
        _check_config_value(where, key, value)
    if "method" in settings and "preset" in settings:
        raise UsageError(f"{where}: give method or preset, not both (a preset replaces the method)")
    return settings


def _check_config_value(where: str, key: str, value: object) -> None:
    if key == "all":
        if not isinstance(value, bool):
            word = value.strip().lower() if isinstance(value, str) else ""
            write = f"all = {word}" if word in ("true", "false") else "all = true or all = false"
            raise UsageError(
                f"{where}: all = {_toml_shown(value)} is {_toml_kind(value)}; write {write} (a TOML boolean, no quotes)"
            )
    elif key == "seed":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise UsageError(
                f"{where}: seed = {_toml_shown(value)} is {_toml_kind(value)}; write an integer "
                '(seed = 42) or a string (seed = "run-7")'
            )
    elif key in ("method", "preset", "fan_mode"):
        if not isinstance(value, str):
            example = {
                "method": 'method = "xavier"',
                "preset": 'preset = "hf"',
                "fan_mode": 'fan_mode = "torch"',
            }[key]
            raise UsageError(
                f"{where}: {key} = {_toml_shown(value)} is {_toml_kind(value)}; write a string ({example})"
            )
    elif key == "rules":
        if not isinstance(value, dict):
            raise UsageError(f'{where}: [rules] must be a table of "GLOB" = "SPEC", not {_toml_kind(value)}')
        for pattern, spec in value.items():
            if not isinstance(spec, str):
                raise UsageError(
                    f"{where}: [rules] {_toml_shown(pattern)} = {_toml_shown(spec)} is {_toml_kind(spec)}; "
                    'write a string ("*.bias" = "constant(0.1)")'
                )


_TOML_KINDS = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _toml_kind(value: object) -> str:
    return next((name for kind, name in _TOML_KINDS if isinstance(value, kind)), "a date or time")


def _toml_shown(value: object) -> str:
    """A TOML value as the user wrote it, roughly, and short."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int) and abs(value) >= 10**40:
        text = "an integer of more than 40 digits"
    elif isinstance(value, (list, dict)):
        text = "[…]" if isinstance(value, list) else "{…}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def config_options(
    dtype: str | None = None, max_shard_size: str | int | None = None, trust_remote_code: bool = False
) -> ConfigOptions:
    """``--dtype``, ``--max-shard-size`` (bytes, or text such as ``500MB``) and ``--trust-remote-code``."""
    if isinstance(max_shard_size, str):
        from netinit_cli.formats.safetensors.sharded import parse_size

        size: int | None = parse_size(max_shard_size)
    else:
        size = max_shard_size
    if size is not None and (isinstance(size, bool) or size <= 0):
        raise UsageError(f"--max-shard-size {size!r} must be at least one byte, e.g. 5GB")
    if dtype is not None and dtype not in ("f32", "f16", "bf16"):
        raise UsageError(f"--dtype {dtype!r}: choose one of f32, f16, bf16")
    return ConfigOptions(dtype=dtype, trust_remote_code=trust_remote_code, max_shard_size=size)
