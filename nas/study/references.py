"""Reference architectures of a study: known placements scored on the same footing as searched
ones (``no_attention``, ``<op>_everywhere``, or any ``{name, choices}`` given in the config).
"""

from __future__ import annotations

from typing import Any, Mapping

from nas.engine.network import canonical_arch
from nas.errors import UsageError, did_you_mean
from search_spaces.space import SKIP, SearchSpace


def reference_names(space: SearchSpace) -> list[str]:
    """Names of the built-in reference architectures of a search space."""
    ops = sorted({op for p in space for op in p.ops if op != SKIP})
    return ["no_attention", *[f"{op}_everywhere" for op in ops]]


def reference_arch(ref: Any, space: SearchSpace, where: str = "hpo.reference_trials") -> tuple[str, dict]:
    """Resolve a reference trial entry to ``(name, architecture)``.

    Args:
        ref: ``"no_attention"``, ``"<op>_everywhere"`` (e.g. ``acla_everywhere``: ``op`` at every
            point, reading the largest key count from every reference layer), or
            ``{"name": ..., "choices": {label: value}}`` (unlisted points skip, unlisted key
            counts take the largest value).
        space: the :class:`search_spaces.space.SearchSpace`.

    Raises:
        UsageError: unknown name (did-you-mean), an operator not offered, invalid choices.
    """
    if isinstance(ref, str):
        name = ref
        known = reference_names(space)
        if name not in known:
            hint = did_you_mean(name, known)
            raise UsageError(f"{where}: unknown reference architecture {name!r}{hint}; known: "
                             f"{', '.join(known)}, or {{name: ..., choices: {{label: value}}}}")
        op = SKIP if name == "no_attention" else name[: -len("_everywhere")]
        arch: dict[str, Any] = {}
        for p in space:
            arch[p.op_label()] = op
            for r in p.refs:
                arch[p.key_label(r)] = max(p.keys)
    elif isinstance(ref, Mapping):
        extra = set(ref) - {"name", "choices"}
        if extra or not isinstance(ref.get("name"), str) or not isinstance(ref.get("choices"), Mapping):
            raise UsageError(f"{where}: expected a name or {{name: str, choices: {{label: value}}}}, "
                             f"got {dict(ref)!r}")
        name = ref["name"]
        try:
            given = space.validate(dict(ref["choices"]), complete=False)
        except UsageError as e:
            raise UsageError(f"{where}.{name}: {e}") from None
        arch = {}
        for p in space:
            arch[p.op_label()] = given.get(p.op_label(), SKIP)
            for r in p.refs:
                arch[p.key_label(r)] = given.get(p.key_label(r), max(p.keys))
    else:
        raise UsageError(f"{where}: expected a name or a mapping, got {ref!r}")
    by_label = {c.label for c in space.choices()}
    arch = {k: v for k, v in arch.items() if k in by_label}
    try:
        arch = space.validate(arch)
    except UsageError as e:
        raise UsageError(f"{where}.{name}: {e}") from None
    return name, canonical_arch(space, arch)

