"""Decide, for every classified tensor, whether it is filled, kept or left constant — and why.

A matching ``--rule`` decides first; then the method through the role policy
(:mod:`netinit_cli.roles`), or a framework preset (:mod:`netinit_cli.presets`) when one is given.

Pure: no I/O and no random numbers.  ``--dry-run`` and ``netinit inspect`` stop after this.  (A
weight-norm magnitude's initializer reads or regenerates its direction, but only when the filler
calls it.)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from netinit_cli import dtypes
from netinit_cli.classify import weight_norm_pair
from netinit_cli.distributions import Distribution, parse_distribution
from netinit_cli.errors import UsageError
from netinit_cli.initializers import TensorInit, distribution_init
from netinit_cli.methods import METHOD_NAMES, METHODS, MethodSpec, parse_method
from netinit_cli.model import Action, Param, Planned, Role
from netinit_cli.roles import initializer_for
from netinit_cli.seeding import Seed
from netinit_cli.spec import clipped

if TYPE_CHECKING:
    from netinit_cli.presets import ModelContext, PresetSpec, TensorContext

KEEP = "keep"

# Roles that are kept unless a rule names them: the classifier could not be sure what they are.
OPT_IN_ROLES = frozenset({Role.SCALAR, Role.UNKNOWN, Role.CONFLICT})
# Weight slots whose stored values are a fixed transform: kept unless a rule names them, even
# under --all (re-initializing a DFT basis or a DFL arange breaks the model); a method rule fills
# them as the weights they are.
FIXED_ROLES = frozenset({Role.FIXED_TRANSFORM})
# Roles that are never written, even by a rule: integers, quantized data, shape tensors.
NEVER_ROLES = frozenset({Role.CONSTANT, Role.QUANTIZED})


@dataclass(frozen=True)
class Rule:
    """``GLOB=SPEC``: tensors whose name matches GLOB get SPEC (a method, a distribution, or keep)."""

    pattern: str
    text: str
    method: MethodSpec | None = None
    distribution: Distribution | None = None

    @property
    def keep(self) -> bool:
        return self.method is None and self.distribution is None

    def matches(self, param: Param) -> bool:
        return any(fnmatch.fnmatchcase(name, self.pattern) for name in (param.name, *param.aliases))

    def describe(self) -> str:
        return f"{self.pattern}={self.text}"


def parse_rule(text: str, *, origin: str = "--rule") -> Rule:
    pattern, sep, spec = text.partition("=")
    pattern, spec = pattern.strip(), spec.strip()
    if not sep or not pattern or not spec:
        raise UsageError(
            f"{origin} {clipped(text, 80)!r}: expected GLOB=SPEC, e.g. 'lm_head.*=xavier' or '*.bias=constant(0.1)' or 'pos*=keep'"
        )
    return make_rule(pattern, spec, origin=origin)


def make_rule(pattern: str, spec: str, *, origin: str = "--rule") -> Rule:
    head = spec.split("(", 1)[0].strip().lower()
    if head == KEEP:
        return Rule(pattern, KEEP)
    if head in METHOD_NAMES:
        method = parse_method(spec)
        if not METHODS[method.name].in_rules:
            raise UsageError(
                f"{origin} {pattern}={spec}: {method.name} applies to the whole model, give it with "
                f"--method {method.name} (a rule can keep tensors out of it: '{pattern}=keep')"
            )
        return Rule(pattern, method.describe(), method=method)
    try:
        distribution = parse_distribution(spec, allow_none=False, option=f"{origin} {clipped(pattern, 80)}")
    except UsageError as exc:
        raise UsageError(
            f"{origin} {clipped(f'{pattern}={spec}', 80)}: SPEC must be a method ({', '.join(METHOD_NAMES)}), "
            f"a distribution, or 'keep' — {str(exc).splitlines()[0]}"
        ) from None
    return Rule(pattern, distribution.describe(), distribution=distribution)


@dataclass(frozen=True)
class Options:
    """Everything that decides the plan.  Built by the CLI or the Python API."""

    method: MethodSpec
    seed: Seed
    all: bool = False
    fan_mode: str = "semantic"
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    preset: PresetSpec | None = None  # replaces ``method`` for every tensor no rule matches

    def rule_for(self, param: Param) -> Rule | None:
        """First matching rule wins (command-line rules come before config-file rules)."""
        return next((rule for rule in self.rules if rule.matches(param)), None)


# The stored values of a tensor, by name (a model file's read_array): weight norm's g needs them
# when its direction v is kept.
StoredValues = Callable[[str], np.ndarray]


def make_plan(
    params: Sequence[Param],
    options: Options,
    stored: StoredValues | None = None,
    model: ModelContext | None = None,
) -> list[Planned]:
    """The plan of every param.  ``model`` (its config.json, its names) is what a preset may know
    about the whole model (:func:`netinit_cli.presets.model_context`)."""
    contexts: dict[str, TensorContext] = {}
    if options.preset is not None:
        from netinit_cli.presets import ModelContext, tensor_contexts  # only for a preset run

        contexts = tensor_contexts(params, model or ModelContext(names=frozenset(p.name for p in params)))
    plan = [plan_one(param, options, contexts.get(param.name)) for param in params]
    by_name = {entry.param.name: entry for entry in plan}
    shapes = {param.name: param.shape for param in params}
    return [
        _derive_weight_norm(entry, by_name, shapes, stored) if _derived(entry, options) else entry
        for entry in plan
    ]


def _derived(entry: Planned, options: Options) -> bool:
    """A filled weight-norm magnitude whose value follows from its direction (a distribution
    rule is obeyed as given)."""
    if entry.param.role is not Role.WEIGHT_NORM_G or entry.action is not Action.FILL:
        return False
    rule = options.rule_for(entry.param)
    return rule is None or rule.method is not None


def _derive_weight_norm(
    entry: Planned,
    by_name: dict[str, Planned],
    shapes: dict[str, tuple[int, ...]],
    stored: StoredValues | None,
) -> Planned:
    """g = ‖v‖ of the v the output will hold (the new one, or the stored one), so that the
    layer's effective weight g · v / ‖v‖ is v itself, as torch's weight_norm sets it up."""
    pair = weight_norm_pair(entry.param.name, shapes)
    assert pair is not None, entry.param.name
    direction = by_name[pair.direction]
    v = direction.param
    if direction.action is Action.FILL:
        v_init = direction.initializer

        def values(seed: Seed) -> np.ndarray:
            generated = np.empty(v.shape, dtypes.compute_dtype(v.dtype))
            v_init.fill(generated, seed, v.name)
            return dtypes.cast_checked(generated, v.dtype, v.name)  # as it will be stored

        source = "the new"
    elif v.has_data and stored is not None:
        read = stored

        def values(seed: Seed) -> np.ndarray:
            return read(v.name)

        source = "the stored"
    else:
        why = f"weight-norm magnitude: its direction {v.name} is neither filled nor stored"
        return replace(entry, action=Action.KEEP, initializer=None, init="", why=why)
    axes, shape = pair.axes, entry.param.shape

    def fill(out: np.ndarray, seed: Seed, name: str) -> None:
        out[...] = norm_over(values(seed), axes).reshape(shape)

    label = f"‖{v.name.rsplit('.', 1)[-1]}‖ of {source} v (weight norm)"
    return replace(
        entry,
        initializer=TensorInit(label, None, None, None, None, fill),
        init=label,
        fan_in=None,
        fan_out=None,
        expected_mean=None,
        expected_std=None,
    )


def norm_over(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The Euclidean norm of ``values`` over ``axes`` (the kept axis first), summed in float64
    without a float64 copy of ``values``."""
    kept = [axis for axis in range(values.ndim) if axis not in axes]
    rows = np.moveaxis(values, kept, list(range(len(kept)))).reshape(
        math.prod(values.shape[a] for a in kept), -1
    )
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float32)  # bfloat16, float16, float8: exact in float32
    squares: np.ndarray = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    norms: np.ndarray = np.sqrt(squares)
    return norms


def plan_one(param: Param, options: Options, context: TensorContext | None = None) -> Planned:
    planned = _decide(param, options, context)
    if planned.fan_in is None and param.layout is not None and len(param.shape) >= 2:
        # Kept tensors show their fans too (inspect, --dry-run): the layout decides them.
        fans = (
            param.layout.torch_fans(param.shape)
            if options.fan_mode == "torch"
            else param.layout.fans(param.shape)
        )
        return replace(planned, fan_in=fans[0], fan_out=fans[1])
    return planned


def _decide(param: Param, options: Options, context: TensorContext | None = None) -> Planned:
    rule = options.rule_for(param)
    rule_text = rule.describe() if rule else ""
    if param.role in NEVER_ROLES or not dtypes.is_float(param.dtype):
        return Planned(param, Action.CONSTANT, rule=rule_text, why=_constant_why(param))
    if rule is not None and rule.keep:
        return Planned(param, Action.KEEP, rule=rule_text, why=f"kept by rule {rule_text}")
    if param.role in OPT_IN_ROLES and rule is None:
        why = f"{param.role.value}: kept; opt in with --rule '{param.name}=SPEC'"
        return Planned(param, Action.KEEP, why=why)
    if param.role in FIXED_ROLES and rule is None:
        why = f"fixed transform: {param.reason}; a --rule naming it re-initializes it"
        return Planned(param, Action.KEEP, why=why)
    if param.has_data and not options.all:
        return Planned(param, Action.KEEP, rule=rule_text, why="has data; --all re-initializes it")
    if param.numel == 0 and param.has_data:
        return Planned(param, Action.KEEP, rule=rule_text, why="zero elements: nothing to fill")
    if param.numel == 0:  # missing: created like any other tensor, with no values
        why = "missing: zero elements, written empty"
        return Planned(param, Action.FILL, init=EMPTY.label, rule=rule_text, why=why, initializer=EMPTY)
    why = "missing: no data in the input" if not param.has_data else "--all"
    if rule is None and options.preset is not None:
        from netinit_cli.presets import TensorContext, decide
        from netinit_cli.presets.tensor_init import tensor_init

        choice = decide(options.preset, param, context or TensorContext())
        if not choice.writes:
            return Planned(param, Action.KEEP, why=choice.label)
        init = tensor_init(choice, param)
    else:
        init = _initializer(param, options, rule)
    check_reach(param, init)
    return Planned(
        param,
        Action.FILL,
        init=init.label,
        rule=rule_text,
        fan_in=init.fan_in,
        fan_out=init.fan_out,
        expected_std=init.expected_std,
        expected_mean=init.expected_mean,
        why=why,
        initializer=init,
    )


def _no_values(out: np.ndarray, seed: Seed, name: str) -> None:
    """A tensor with zero elements has no values to draw."""


EMPTY = TensorInit("empty (zero elements)", None, None, None, None, _no_values)


def _initializer(param: Param, options: Options, rule: Rule | None) -> TensorInit:
    if rule is not None and rule.distribution is not None:
        return distribution_init(rule.distribution)
    method = rule.method if rule is not None and rule.method is not None else options.method
    if param.role in OPT_IN_ROLES or param.role in FIXED_ROLES:
        # Opted in by a method rule: treat it as a weight; the method falls back to the
        # [out, in, k…] convention when there is no layout, and says so in its label.
        param = param.classified(Role.WEIGHT, param.reason, param.layout)
    return initializer_for(param, method, fan_mode=options.fan_mode)


def check_reach(param: Param, init: TensorInit) -> None:
    """Refuse, before anything is generated, an initializer whose values (or the values it
    computes with) cannot be finite in the dtype they are generated in: float64 for F64,
    float32 for every other float (narrower dtypes are also range-checked value by value as
    they are rounded, in dtypes.cast_checked)."""
    if init.reach is None:
        return
    compute = dtypes.compute_dtype(param.dtype)
    reach = init.reach(compute)
    limit = float(np.finfo(compute).max)
    if reach <= limit:
        return
    where = (
        f"{param.dtype}'s"
        if dtypes.numpy_dtype(param.dtype) == compute
        else f"{compute.name}'s (in which {param.dtype} values are generated)"
    )
    raise UsageError(
        f"tensor {param.name!r}: {init.label} would reach {reach:.4g} while generating, beyond "
        f"{where} largest finite value {limit:.4g}; use a smaller scale (std, bounds, gain)"
    )


def _constant_why(param: Param) -> str:
    if not dtypes.is_float(param.dtype):
        return f"{param.dtype} tensor: never initialized"
    return param.reason or param.role.value


def counts(plan: Iterable[Planned]) -> dict[str, int]:
    tally = {action.value: 0 for action in Action}
    for entry in plan:
        tally[entry.action.value] += 1
    return tally
