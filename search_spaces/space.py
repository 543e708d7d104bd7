"""Search spaces as data: insertion points, candidate operators, reference layers, key counts.

Labels are the contract (``docs/design.md``, "Search space"). For insertion point ``b03`` (after residual
block 3):

* ``b03/op`` - ``"skip"`` or an operator name (``acla``, ``rela``, ``lcoa``, ``nla``);
* ``b03/keys@{ref}`` - for operators that read earlier layers (ACLA), the number of keys
  sampled from reference layer ``ref`` (``head`` or ``b00`` ... ``b02``), from a set such as
  ``{0, 2, 4, 9}``; 0 means that layer is not referenced. An ACLA module whose key counts are all
  0 is the identity, i.e. the same network as ``skip``.

An architecture is a plain dict ``{label: value}``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from nas.errors import UsageError, did_you_mean

SKIP = "skip"


@dataclass(frozen=True)
class Choice:
    """One labelled categorical choice: ``label`` and its ordered candidate ``values``."""

    label: str
    values: tuple

    def index(self, value: Any) -> int:
        """Position of ``value`` in :attr:`values`.

        Raises:
            UsageError: the value is not offered (names the label and the offered values).
        """
        try:
            return self.values.index(value)
        except ValueError:
            raise UsageError(
                f"choices.{self.label}: {value!r} is not offered; offered: {list(self.values)}"
            ) from None


@dataclass
class PointSpec:
    """One insertion point: its candidate operators, reference layers and key-count values."""

    name: str
    ops: tuple[str, ...]
    refs: tuple[str, ...]
    keys: tuple[int, ...]

    def op_label(self) -> str:
        """``bNN/op``."""
        return f"{self.name}/op"

    def key_label(self, ref: str) -> str:
        """``bNN/keys@REF``."""
        return f"{self.name}/keys@{ref}"


@dataclass
class SpaceConfig:
    """The ``space`` block of a search config.

    Attributes:
        backbone: ``{"preset": "edsr-small"}`` or explicit EDSR keywords
            (``num_feat``, ``num_block``, ``res_scale``).
        points: insertion points to search (``"all"`` or a list like ``["b01", "b03"]``).
        ops: candidate operators at every point; ``"skip"`` must be among them.
        max_refs: R, each point references the R most recent earlier features (``head`` and
            earlier block outputs).
        keys: key-count values per reference layer (0 = not referenced).
        op_config: constructor keywords per operator, e.g. ``{"rela": {"heads": 4}}``.
        refs: explicit reference layers per point, overriding ``max_refs``, e.g. the ACLA paper's
            placement ``{"b07": ["head", "b03"]}`` (each must be an earlier feature).
    """

    backbone: dict = field(default_factory=lambda: {"preset": "edsr-small"})
    points: Any = "all"
    ops: list[str] = field(default_factory=lambda: [SKIP, "acla"])
    max_refs: int = 2
    keys: list[int] = field(default_factory=lambda: [0, 2, 4, 9])
    op_config: dict = field(default_factory=dict)
    refs: dict = field(default_factory=dict)


def check_op_config(config: SpaceConfig, channels: int, where: str = "space") -> None:
    """Build every operator of ``config.op_config`` once at ``channels`` channels (one reference
    for operators that read references), so that a keyword the operator does not take or a
    value it refuses is reported before anything is written or trained.

    Raises:
        UsageError: ``<where>.op_config.<op>: <the operator's message>``.
    """
    from search_spaces.operators import OPERATORS

    for op, kw in config.op_config.items():
        cls = OPERATORS.get(op)
        extra = {"num_refs": 1} if getattr(cls, "uses_refs", False) and "num_refs" not in kw else {}
        try:
            cls(channels, **extra, **kw)
        except (TypeError, ValueError) as e:
            raise UsageError(f"{where}.op_config.{op}: {e}") from None


class SearchSpace:
    """The resolved search space.

    Args:
        config: the ``space`` block.
        num_block: number of residual blocks of the backbone (insertion points ``b00`` ...).
        require_choice: refuse a space where every point offers only ``skip`` (a search space
            must offer something; a fixed network's space need not).

    Raises:
        UsageError: unknown operator, ``skip`` missing, unknown insertion point, empty space,
            bad key counts (each message names the field).
    """

    def __init__(self, config: SpaceConfig, num_block: int, require_choice: bool = True) -> None:
        from search_spaces.operators import OPERATORS

        self.config = config
        all_points = [f"b{i:02d}" for i in range(num_block)]
        if config.points == "all":
            names = all_points
        else:
            names = list(config.points)
            for n in names:
                if n not in all_points:
                    raise UsageError(
                        f"space.points: {n!r} is not an insertion point of a {num_block}-block "
                        f"backbone (b00..b{num_block - 1:02d})"
                    )
        if not names:
            raise UsageError("space.points: empty search space (no insertion point)")
        ops = list(dict.fromkeys(config.ops))
        if SKIP not in ops:
            raise UsageError("space.ops: must contain 'skip' (attention is optional at a point)")
        for op in ops:
            if op != SKIP:
                try:
                    OPERATORS.get(op)
                except UsageError as e:
                    raise UsageError(f"space.ops: {e}") from None
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in config.keys):
            raise UsageError(f"space.keys: expected integer key counts, got {list(config.keys)}")
        keys = sorted(dict.fromkeys(int(k) for k in config.keys))
        if not keys or keys[0] < 0 or max(keys) < 1:
            raise UsageError(f"space.keys: need non-negative key counts with one >= 1, got {keys}")
        if config.max_refs < 1:
            raise UsageError(f"space.max_refs: must be >= 1, got {config.max_refs}")
        for op, cfg in config.op_config.items():
            if op not in ops:
                raise UsageError(f"space.op_config.{op}: operator is not in space.ops {ops}")
            if not isinstance(cfg, dict):
                raise UsageError(f"space.op_config.{op}: must be a mapping, got {cfg!r}")
        self.points: dict[str, PointSpec] = {}
        taps = ["head", *all_points]
        for n in config.refs:
            if n not in names:
                raise UsageError(f"space.refs.{n}: not one of the searched points {names}")
        for n in names:
            earlier = taps[: taps.index(n)]
            refs = tuple(earlier[-config.max_refs :])
            if n in config.refs:
                refs = tuple(config.refs[n])
                bad = [r for r in refs if r not in earlier]
                if bad or not refs or len(set(refs)) != len(refs):
                    raise UsageError(
                        f"space.refs.{n}: {list(refs)} must be distinct earlier features of {n} "
                        f"(from {earlier})"
                    )
            self.points[n] = PointSpec(n, tuple(ops), refs, tuple(keys))
        if require_choice and all(len(p.ops) == 1 for p in self.points.values()):
            raise UsageError("space.ops: empty search space (only 'skip' is offered)")

    # -- choices --------------------------------------------------------------------------
    def uses_refs(self, op: str) -> bool:
        """Whether operator ``op`` reads reference layers (and so has key-count choices)."""
        from search_spaces.operators import OPERATORS

        return op != SKIP and OPERATORS.get(op).uses_refs

    def op_config(self, op: str) -> dict:
        """A copy of the constructor keywords of ``op`` (``space.op_config``)."""
        return copy.deepcopy(self.config.op_config.get(op, {}))

    def choices(self) -> list[Choice]:
        """All labelled choices, in network order (op first, then keys per reference)."""
        out = []
        for p in self.points.values():
            out.append(Choice(p.op_label(), p.ops))
            if any(self.uses_refs(op) for op in p.ops) and len(p.keys) > 1:
                out += [Choice(p.key_label(r), p.keys) for r in p.refs]
        return out

    def __iter__(self) -> Iterator[PointSpec]:
        return iter(self.points.values())

    def validate(self, arch: Mapping[str, Any], *, complete: bool = True) -> dict[str, Any]:
        """Check an architecture dict against the space; returns a normalised copy.

        Key-count labels of points whose operator does not read references may be omitted.

        Raises:
            UsageError: unknown label, value not offered, or (``complete``) a missing label.
        """
        by_label = {c.label: c for c in self.choices()}
        out: dict[str, Any] = {}
        for label, value in arch.items():
            if label not in by_label:
                raise UsageError(f"choices: unknown label {label!r}{did_you_mean(label, by_label)}")
            c = by_label[label]
            out[label] = c.values[c.index(value)]
        if complete:
            for p in self:
                op_label = p.op_label()
                if op_label not in out:
                    raise UsageError(f"choices: missing label {op_label!r}")
                if self.uses_refs(out[op_label]):
                    for r in p.refs:
                        lab = p.key_label(r)
                        if lab not in out and lab in by_label:
                            raise UsageError(f"choices: missing label {lab!r}")
        return out

    def active_keys(self, arch: Mapping[str, Any], point: str) -> tuple[int, ...]:
        """Key counts per reference of ``point`` under ``arch`` (refs in :attr:`PointSpec.refs`)."""
        p = self.points[point]
        return tuple(int(arch.get(p.key_label(r), p.keys[-1])) for r in p.refs)
