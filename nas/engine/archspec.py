"""ArchSpec: the exported architecture (JSON), and :func:`build_model` that rebuilds it.

Format (``format_version`` 1; ``docs/design.md``, "Files"), with a ``space`` block that records
what was offered so a spec can be validated and its reference layers resolved::

    {"format_version": 1,
     "task": {"name": "sr", "scale": 2},
     "backbone": {"type": "edsr", "num_feat": 64, "num_block": 16, "res_scale": 1.0},
     "space": {"ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4, 9], "op_config": {}},
     "choices": {"b03/op": "acla", "b03/keys@b01": 4, "b03/keys@b02": 9, "b07/op": "skip"},
     "probs": {"b03/op": {"skip": 0.08, "acla": 0.92}},
     "cost": {"flops": 1.23e10, "params": 1.45e6, "lr_size": [360, 640],
              "convention": "FLOPs = 2 x MACs"},
     "provenance": {"study": "...", "trial": 7, "seed": 0, "tau": 0.5, "lambda": 0.1, "git": "..."}}

The ``backbone`` block is written by the backbone itself (``archspec_block()``) and resolved
through :data:`backbones.BACKBONES` (its ``type`` names a registered class whose
``ARCHSPEC_KEYS`` are the allowed keys). Insertion points are the ``bNN`` prefixes of the
``choices`` labels. Without a ``space`` block (a hand-written spec) the space is read off the
choices: the operators used, the key counts used plus 0, and each point's reference layers from
its ``bNN/keys@REF`` labels. ``probs``, ``cost`` and ``provenance`` are informative.
:func:`build_model` builds the network with the same constructors as the supernet
(:func:`nas.engine.network.build_fixed`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nas.errors import UsageError, did_you_mean

FORMAT_VERSION = 1
_TOP_KEYS = ("format_version", "task", "backbone", "space", "choices", "probs", "cost",
             "provenance")
_SPACE_KEYS = ("ops", "max_refs", "keys", "op_config", "refs")


@dataclass
class ArchSpec:
    """A parsed, validated ArchSpec (see the module docstring for the JSON format).

    Attributes:
        task: ``{"name": "sr", "scale": 2}`` and the like (see :class:`nas.restoration.task.Task`).
        backbone: the backbone block, e.g. ``{"type": "edsr", "num_feat": 32, ...}``.
        space: what the search offered (may be empty for hand-written specs).
        choices: the architecture ``{label: value}``.
        probs: gate probabilities at export (informative).
        cost: ``{"flops", "gflops", "params", "lr_size", "convention"}`` (informative).
        provenance: where the spec came from (study, trial, seed, git commit, ...).
        source: the file or description used in error messages.
    """

    task: dict
    backbone: dict
    space: dict
    choices: dict
    probs: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    source: str = "<arch>"

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The JSON object (``format_version`` first)."""
        return {"format_version": FORMAT_VERSION, "task": self.task, "backbone": self.backbone,
                "space": self.space, "choices": self.choices, "probs": self.probs,
                "cost": self.cost, "provenance": self.provenance}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON atomically; returns the path."""
        from nas.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<arch>") -> "ArchSpec":
        """Parse and validate.

        Raises:
            UsageError: wrong ``format_version``, missing or unknown field, unknown backbone,
                unknown label, key count or operator not offered (names ``source`` and the field).
        """
        def bad(field_: str, msg: str) -> UsageError:
            return UsageError(f"{source}: {field_}: {msg}")

        if not isinstance(d, Mapping):
            raise bad("(top level)", "must be a JSON object")
        if d.get("format_version") != FORMAT_VERSION:
            raise bad("format_version", f"expected {FORMAT_VERSION}, got "
                                        f"{d.get('format_version')!r}")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise bad(unknown[0], f"unknown field{did_you_mean(unknown[0], _TOP_KEYS)}")
        for key in ("task", "backbone", "choices"):
            if not isinstance(d.get(key), Mapping):
                raise bad(key, "missing or not an object")
        for key in ("space", "probs", "cost", "provenance"):
            if d.get(key) is not None and not isinstance(d.get(key), Mapping):
                raise bad(key, "not an object")
        backbone = dict(d["backbone"])
        num_block = _check_backbone(backbone, bad)
        space = dict(d.get("space") or {})
        extra = sorted(set(space) - set(_SPACE_KEYS))
        if extra:
            raise bad(f"space.{extra[0]}", f"unknown field{did_you_mean(extra[0], _SPACE_KEYS)}")
        for label in d["choices"]:
            point = str(label).split("/", 1)[0]
            if not (len(point) == 3 and point[0] == "b" and point[1:].isdigit()
                    and int(point[1:]) < num_block):
                raise bad("choices", f"unknown label {label!r} (insertion points are "
                                     f"b00..b{num_block - 1:02d})")
        spec = cls(task=dict(d["task"]), backbone=backbone, space=space,
                   choices=dict(d["choices"]), probs=dict(d.get("probs") or {}),
                   cost=dict(d.get("cost") or {}), provenance=dict(d.get("provenance") or {}),
                   source=source)
        from search_spaces.space import check_op_config

        try:
            spec.task_obj()
            spec.search_space().validate(spec.choices)
            check_op_config(spec.space_config(), int(backbone.get("num_feat", 64)))
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
        return spec

    # -- objects -------------------------------------------------------------------------
    def task_obj(self):
        """The :class:`~nas.restoration.task.Task` of the ``task`` block.

        Raises:
            UsageError: unknown key or bad value (names ``task.<key>``).
        """
        from nas.restoration.task import Task

        return Task.from_dict(self.task, "task")

    def space_config(self):
        """The :class:`~search_spaces.space.SpaceConfig` this spec's labels refer to.

        Raises:
            UsageError: without a ``space`` block, an operator reading references at a point with
                no ``bNN/keys@REF`` label (its reference layers are unknown).
        """
        from search_spaces.space import SKIP, SpaceConfig

        bb = dict(self.backbone)
        points = sorted({label.split("/", 1)[0] for label in self.choices})
        if self.space:
            defaults = SpaceConfig()
            sp = {k: self.space.get(k, getattr(defaults, k)) for k in _SPACE_KEYS}
            return SpaceConfig(backbone=bb, points=points or "all", ops=list(sp["ops"]),
                               max_refs=int(sp["max_refs"]), keys=list(sp["keys"]),
                               op_config=dict(sp["op_config"] or {}), refs=dict(sp["refs"] or {}))
        # no space block: read the space off the choices
        used_ops = sorted({str(v) for k, v in self.choices.items() if k.endswith("/op")} - {SKIP})
        refs: dict[str, list[str]] = {}
        keys = {0}
        for label, v in self.choices.items():
            if "/keys@" in label:
                point, ref = label.split("/keys@", 1)
                refs.setdefault(point, []).append(ref)
                if isinstance(v, int) and not isinstance(v, bool):
                    keys.add(v)
        from search_spaces.operators import OPERATORS

        for label, v in self.choices.items():
            point = label.split("/", 1)[0]
            if label.endswith("/op") and v in OPERATORS and OPERATORS.get(v).uses_refs \
                    and point not in refs:
                raise UsageError(f"choices: {label} is {v!r} but no {point}/keys@REF label names "
                                 "its reference layers (add them, or a 'space' block)")
        if len(keys) == 1:
            keys = set(SpaceConfig().keys)
        return SpaceConfig(backbone=bb, points=points or "all", ops=[SKIP, *used_ops],
                           max_refs=max([len(r) for r in refs.values()] or [1]),
                           keys=sorted(keys), refs=refs)

    def search_space(self):
        """The :class:`~search_spaces.space.SearchSpace` of :meth:`space_config`.

        Raises:
            UsageError: as :meth:`space_config`, or a space the labels do not fit.
        """
        from search_spaces.space import SearchSpace

        return SearchSpace(self.space_config(), int(self.backbone["num_block"]),
                           require_choice=False)


def _check_backbone(block: dict, bad) -> int:
    """Validate an ArchSpec backbone block through the registry; returns its ``num_block``."""
    from backbones import BACKBONES

    kind = block.get("type", "edsr")
    block.setdefault("type", kind)
    if not isinstance(kind, str) or kind not in BACKBONES:
        raise bad("backbone.type", f"unknown backbone {kind!r}{did_you_mean(kind, BACKBONES.keys())}")
    keys = getattr(BACKBONES.get(kind), "ARCHSPEC_KEYS", None)
    if keys is None:
        raise bad("backbone.type", f"{kind!r} is a preset; an ArchSpec names the backbone class "
                                   "and its keywords (e.g. type 'edsr', num_feat, num_block)")
    extra = sorted(set(block) - {"type", *keys})
    if extra:
        raise bad(f"backbone.{extra[0]}", f"unknown field{did_you_mean(extra[0], keys)}")
    num_block = block.get("num_block", 16)
    if isinstance(num_block, bool) or not isinstance(num_block, int) or num_block < 1:
        raise bad("backbone.num_block", f"expected a positive integer, got {num_block!r}")
    block["num_block"] = num_block
    return num_block


def space_block(space_cfg) -> dict:
    """The ArchSpec ``space`` block of a :class:`search_spaces.space.SpaceConfig`: what was
    offered (operators, key counts, operator keywords) and how reference layers are chosen."""
    out = {"ops": list(space_cfg.ops), "max_refs": space_cfg.max_refs,
           "keys": sorted(set(space_cfg.keys)), "op_config": dict(space_cfg.op_config)}
    if space_cfg.refs:
        out["refs"] = dict(space_cfg.refs)
    return out


def load_archspec(path: str | os.PathLike) -> ArchSpec:
    """Read and validate an ArchSpec JSON file.

    Raises:
        UsageError: missing file, a folder, not text, invalid JSON (with line), invalid content
            (names the field).
    """
    from nas.io import read_text

    text = read_text(path, "ArchSpec file")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") \
            from None
    return ArchSpec.from_dict(d, source=str(path))


def build_model(spec: ArchSpec | Mapping[str, Any] | str | os.PathLike):
    """Build the fixed network of an ArchSpec (object, dict, or JSON path), randomly initialised.

    Returns:
        :class:`nas.engine.network.AttentionNet`, ``(B, 3, H, W) -> (B, 3, sH, sW)``.

    Raises:
        UsageError: invalid spec (see :meth:`ArchSpec.from_dict`).
    """
    from nas.engine.network import build_fixed

    if isinstance(spec, (str, os.PathLike)):
        spec = load_archspec(spec)
    elif not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_dict(spec)
    return build_fixed(spec.search_space(), spec.task_obj(), spec.choices)


def state_dict_of(ckpt: Any) -> Any:
    """The weights inside a checkpoint object: ``{"params": sd}`` (BasicSR), ``{"params_ema":
    sd}``, ``{"model": sd}`` (our training states) or a bare state dict."""
    if isinstance(ckpt, dict):
        for key in ("params", "params_ema", "model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key]
    return ckpt


def load_weights(spec: ArchSpec, path: str | os.PathLike, key: str | None = None):
    """:func:`build_model` and load weights from a checkpoint (see :func:`state_dict_of`).

    Args:
        spec: the architecture.
        path: the checkpoint file.
        key: take the weights under this key (e.g. ``params_ema``) instead of the first found.

    Raises:
        UsageError: missing/unreadable checkpoint, a file holding no state dict, or weights that
            do not fit the architecture (names the first missing or unexpected key).
    """
    import torch

    model = build_model(spec)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise UsageError(f"{path}: cannot load checkpoint ({e.__class__.__name__})") from None
    if key is not None:
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise UsageError(f"{path}: no {key!r} weights in this checkpoint")
        state = ckpt[key]
    else:
        state = state_dict_of(ckpt)
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UsageError(f"{path}: holds no state dict of weights (a {type(state).__name__})")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
        raise UsageError(f"{path}: weights do not fit {spec.source} ({what}; "
                         f"{len(missing)} missing, {len(unexpected)} unexpected keys)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UsageError(f"{path}: weights do not fit {spec.source} ({k}: shape "
                             f"{tuple(v.shape)} in the file, {tuple(own[k].shape)} in the network)")
    model.load_state_dict(state)
    return model
