"""What a generator's forward takes, read from the file before anything runs.

Knowing it up front turns "the network crashed on our inputs" into a sentence naming the
missing flag: a forward that needs a second input is conditional (``--num-classes``); a
``truncation_psi``/``psi`` keyword is where ``--truncation`` goes; a ``.pt2`` program may fix
its batch size or ``z_dim``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from pathlib import Path

import torch

from ganaudit.errors import GanauditError

TRUNCATION_NAMES = ("truncation_psi", "psi")


@dataclass(frozen=True)
class ForwardSignature:
    """The inputs a generator's forward accepts.

    Attributes:
        known: False when nothing could be read; then nothing is checked before the first call.
        min_inputs: positional inputs it requires (1: ``z``; 2: ``z`` and a class label).
        max_inputs: most positional inputs it accepts; ``None`` when unlimited (``*args``).
        keywords: keyword arguments it accepts, by name.
        tensor_keywords: those among ``keywords`` that a ``.pt2`` program takes as tensors.
        fixed_keywords: keyword values baked into a ``.pt2`` program at export, by name.
        z_dim: the latent size the file fixes, or None.
        batch_range: ``(smallest, largest)`` batch the program accepts; largest None: unbounded.
    """

    known: bool = False
    min_inputs: int = 1
    max_inputs: int | None = None
    keywords: frozenset[str] = frozenset()
    tensor_keywords: frozenset[str] = frozenset()
    fixed_keywords: dict = field(default_factory=dict)
    z_dim: int | None = None
    batch_range: tuple[int, int | None] = (1, None)

    def truncation_keyword(self) -> str | None:
        """The keyword ``--truncation`` is passed as, or None when forward has none."""
        return next((name for name in TRUNCATION_NAMES if name in self.keywords), None)


def signature_of_module(module) -> ForwardSignature:
    """Read the signature of an eager ``nn.Module`` or a TorchScript module."""
    if isinstance(module, torch.jit.ScriptModule):
        return _signature_of_script(module)
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return ForwardSignature()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_args = any(p.kind == p.VAR_POSITIONAL for p in params)
    keywords = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return ForwardSignature(
        known=True,
        min_inputs=sum(p.default is p.empty for p in positional),
        max_inputs=None if var_args else len(positional),
        keywords=frozenset(keywords),
        z_dim=_int_attr(module, "z_dim"),
    )


def _signature_of_script(module) -> ForwardSignature:
    try:
        arguments = list(module.forward.schema.arguments)[1:]  # the first is self
    except (AttributeError, RuntimeError):
        return ForwardSignature(z_dim=_int_attr(module, "z_dim"))
    positional = [a for a in arguments if not a.kwarg_only]
    return ForwardSignature(
        known=True,
        min_inputs=sum(not a.has_default_value() for a in positional),
        max_inputs=len(positional),
        keywords=frozenset(a.name for a in arguments),
        z_dim=_int_attr(module, "z_dim"),
    )


def signature_of_program(program) -> ForwardSignature:
    """Read the signature of a ``torch.export`` program: inputs, fixed keywords, z and batch sizes."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    leaves = list(program.graph_signature.user_inputs)  # placeholder names, or constants baked in
    try:
        spec = program.module_call_graph[0].signature.in_spec
        args_spec, kwargs_spec = _children(spec)
        n_args, kw_names = args_spec.num_children, list(kwargs_spec.context or [])
    except (AttributeError, IndexError, TypeError, ValueError):
        n_args, kw_names = sum(name in placeholders for name in leaves), []
    fixed, tensor_kw = {}, set()
    if len(leaves) == n_args + len(kw_names):  # each keyword is one leaf: pair them up
        for name, leaf in zip(kw_names, leaves[n_args:]):
            if not (isinstance(leaf, str) and leaf in placeholders):
                fixed[name] = leaf
            elif isinstance(placeholders[leaf].meta.get("val"), torch.Tensor):
                tensor_kw.add(name)
    z_dim, batch_range = None, (1, None)
    first = placeholders.get(leaves[0]) if leaves and isinstance(leaves[0], str) else None
    val = first.meta.get("val") if first is not None else None
    if isinstance(val, torch.Tensor) and val.ndim == 2:
        z_dim = val.shape[1] if isinstance(val.shape[1], int) else None
        batch_range = _dim_range(val.shape[0], program.range_constraints)
    return ForwardSignature(
        known=True, min_inputs=n_args, max_inputs=n_args, keywords=frozenset(kw_names),
        tensor_keywords=frozenset(tensor_kw), fixed_keywords=fixed, z_dim=z_dim, batch_range=batch_range,
    )


def _children(spec):
    children = spec.children() if callable(getattr(spec, "children", None)) else spec.children_specs
    args_spec, kwargs_spec = list(children)[:2]
    return args_spec, kwargs_spec


def _dim_range(size, range_constraints) -> tuple[int, int | None]:
    if isinstance(size, int):
        return (size, size)
    try:
        bounds = range_constraints[size.node.expr]
    except (AttributeError, KeyError):
        return (1, None)
    try:
        lower = max(1, int(bounds.lower))
    except (TypeError, ValueError, AttributeError, OverflowError):
        lower = 1
    try:
        upper = int(bounds.upper)
    except (TypeError, ValueError, AttributeError, OverflowError):  # sympy's infinity
        upper = None
    return (lower, upper if upper is not None and upper < 2**31 else None)


def _int_attr(module, name: str) -> int | None:
    try:
        value = getattr(module, name)
    except (AttributeError, RuntimeError):
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def check_conditional(signature: ForwardSignature, num_classes: int | None, path: Path) -> None:
    """Refuse a conditional generator without ``--num-classes``, and ``--num-classes`` for one that is not."""
    if not signature.known:
        return
    if signature.min_inputs > 2:
        raise GanauditError(
            f"--generator {path}: its forward needs {signature.min_inputs} inputs; ganaudit passes z and, "
            "with --num-classes, a class label"
        )
    if signature.min_inputs == 2 and num_classes is None:
        raise GanauditError(
            f"--generator {path} is a conditional generator (its forward takes a class label after z): "
            "pass --num-classes K (and optionally --class-weights)"
        )
    if num_classes is not None and signature.max_inputs is not None and signature.max_inputs < 2:
        raise GanauditError(
            f"--num-classes {num_classes} was given, but --generator {path} takes no class label "
            "(its forward takes z only); drop --num-classes"
        )


def truncation_kwargs(module, signature: ForwardSignature, psi: float | None, info: dict,
                       device: torch.device) -> dict:
    """Where ``--truncation`` goes: a forward keyword, else a module attribute (see ``generators.py``).

    Records ``truncation_psi`` and ``truncation_via`` in ``info``; returns the keyword arguments of
    every call.
    """
    keyword = signature.truncation_keyword()
    if keyword in signature.fixed_keywords:  # a .pt2 program must be called with the value it was exported with
        baked = signature.fixed_keywords[keyword]
        if psi is not None and (not isinstance(baked, (int, float)) or abs(float(baked) - psi) > 1e-9):
            raise GanauditError(
                f"--truncation {psi:g}: the .pt2 program was exported with {keyword}={baked} fixed; "
                f"export it with {keyword} as a tensor input, or drop --truncation"
            )
        info["truncation_psi"], info["truncation_via"] = baked, f"fixed in the program ({keyword})"
        return {keyword: baked}
    if psi is None:
        if keyword in signature.tensor_keywords:
            raise GanauditError(f"the .pt2 program takes {keyword} as an input: pass --truncation PSI (1 for none)")
        return {}
    if keyword is not None:
        info["truncation_psi"], info["truncation_via"] = psi, f"forward keyword {keyword}"
        value = torch.tensor(psi, device=device) if keyword in signature.tensor_keywords else float(psi)
        return {keyword: value}
    for name in TRUNCATION_NAMES:
        current = getattr(module, name, None)
        if isinstance(current, (float, int)) and not isinstance(current, bool):
            setattr(module, name, float(psi))
            info["truncation_psi"], info["truncation_via"] = psi, f"attribute {name}"
            return {}
    raise GanauditError(
        f"--truncation {psi:g}: the generator takes no truncation (its forward has no truncation_psi or psi "
        "keyword and it has no such attribute); drop --truncation"
    )
