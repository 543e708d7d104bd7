"""ArchSpec: the exported architecture (JSON), and :func:`build_model` that rebuilds it.

Format (``format_version`` 1; design.md section 5, plus a ``space`` block that records what was
offered so a spec can be validated and its reference layers resolved)::

    {"format_version": 1,
     "task": {"name": "sr", "scale": 2},
     "backbone": {"type": "edsr", "num_feat": 64, "num_block": 16, "res_scale": 1.0},
     "space": {"ops": ["skip", "acla"], "max_refs": 2, "keys": [0, 2, 4, 9], "op_config": {}},
     "choices": {"b03/op": "acla", "b03/keys@b01": 4, "b03/keys@b02": 9, "b07/op": "skip"},
     "probs": {"b03/op": {"skip": 0.08, "acla": 0.92}},
     "cost": {"flops": 1.23e10, "params": 1.45e6, "lr_size": [360, 640],
              "convention": "FLOPs = 2 x MACs"},
     "provenance": {"study": "...", "trial": 7, "seed": 0, "tau": 0.5, "lambda": 0.1, "git": "..."}}

Insertion points are the ``bNN`` prefixes of the ``choices`` labels; ``probs``, ``cost`` and
``provenance`` are informative. :func:`build_model` builds the network with the same
constructors as the supernet (:func:`nas.network.build_fixed`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nas.errors import UsageError

FORMAT_VERSION = 1
_BACKBONE_KEYS = {"type", "num_feat", "num_block", "res_scale"}
_TOP_KEYS = {"format_version", "task", "backbone", "space", "choices", "probs", "cost",
             "provenance"}


@dataclass
class ArchSpec:
    """A parsed, validated ArchSpec (see the module docstring for the JSON format)."""

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
        return {"format_version": FORMAT_VERSION, "task": self.task, "backbone": self.backbone,
                "space": self.space, "choices": self.choices, "probs": self.probs,
                "cost": self.cost, "provenance": self.provenance}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON atomically."""
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
        unknown = set(d) - _TOP_KEYS
        if unknown:
            raise bad(sorted(unknown)[0], "unknown field")
        for key in ("task", "backbone", "choices"):
            if not isinstance(d.get(key), Mapping):
                raise bad(key, "missing or not an object")
        backbone = dict(d["backbone"])
        if backbone.get("type", "edsr") != "edsr":
            raise bad("backbone.type", f"unknown backbone {backbone.get('type')!r}")
        extra = set(backbone) - _BACKBONE_KEYS
        if extra:
            raise bad(f"backbone.{sorted(extra)[0]}", "unknown field")
        space = dict(d.get("space") or {})
        num_block = backbone.get("num_block", 16)
        for label in d["choices"]:
            point = str(label).split("/", 1)[0]
            if not (len(point) == 3 and point[0] == "b" and point[1:].isdigit()
                    and int(point[1:]) < int(num_block)):
                raise bad("choices", f"unknown label {label!r} (insertion points are "
                                     f"b00..b{int(num_block) - 1:02d})")
        spec = cls(task=dict(d["task"]), backbone=backbone, space=space,
                   choices=dict(d["choices"]), probs=dict(d.get("probs") or {}),
                   cost=dict(d.get("cost") or {}), provenance=dict(d.get("provenance") or {}),
                   source=source)
        try:
            spec.task_obj()
            spec.search_space().validate(spec.choices)
        except UsageError as e:
            raise UsageError(f"{source}: {e}") from None
        return spec

    # -- objects -------------------------------------------------------------------------
    def task_obj(self):
        from nas.data import Task

        return Task.from_dict(self.task)

    def space_config(self):
        from search_spaces.space import SKIP, SpaceConfig

        points = sorted({label.split("/", 1)[0] for label in self.choices})
        ops = self.space.get("ops") or [SKIP, *sorted({
            v for k, v in self.choices.items() if k.endswith("/op") and v != SKIP})]
        if SKIP not in ops:
            ops = [SKIP, *ops]
        if len(ops) == 1:
            ops = [SKIP, "acla"]
        keys = self.space.get("keys") or sorted({0, *(int(v) for k, v in self.choices.items()
                                                      if "/keys@" in k)} or {0, 9})
        if max(keys) < 1:
            keys = [0, 9]
        bb = {k: v for k, v in self.backbone.items() if k != "type"}
        return SpaceConfig(backbone=bb, points=points or "all", ops=list(ops),
                           max_refs=int(self.space.get("max_refs", 2)), keys=list(keys),
                           op_config=dict(self.space.get("op_config") or {}),
                           refs=dict(self.space.get("refs") or {}))

    def search_space(self):
        from search_spaces.space import SearchSpace

        cfg = self.space_config()
        num_block = int(self.backbone.get("num_block", 16))
        return SearchSpace(cfg, num_block)


def backbone_block(config) -> dict:
    """The ArchSpec ``backbone`` block of an :class:`backbones.EDSRConfig`."""
    return {"type": "edsr", "num_feat": config.num_feat, "num_block": config.num_block,
            "res_scale": config.res_scale}


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
        UsageError: missing file, invalid JSON (with line), invalid content (names the field).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such ArchSpec file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") \
            from None
    return ArchSpec.from_dict(d, source=str(path))


def build_model(spec: ArchSpec | Mapping[str, Any] | str | os.PathLike):
    """Build the fixed network of an ArchSpec (object, dict, or JSON path), randomly initialised.

    Returns:
        :class:`nas.network.AttentionNet`, ``(B, 3, H, W) -> (B, 3, sH, sW)``.

    Raises:
        UsageError: invalid spec (see :meth:`ArchSpec.from_dict`).
    """
    from nas.network import build_fixed

    if isinstance(spec, (str, os.PathLike)):
        spec = load_archspec(spec)
    elif not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_dict(spec)
    return build_fixed(spec.search_space(), spec.task_obj(), spec.choices)


def load_weights(spec: ArchSpec, path: str | os.PathLike):
    """:func:`build_model` and load weights from a checkpoint.

    Accepts ``{"params": state_dict}`` (BasicSR), ``{"model": state_dict}`` (our retrain
    checkpoints) or a bare state dict.

    Raises:
        UsageError: missing/unreadable checkpoint, or weights that do not fit the architecture.
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
    state = ckpt
    if isinstance(ckpt, dict):
        for key in ("params", "model", "state_dict"):
            if key in ckpt and isinstance(ckpt[key], dict):
                state = ckpt[key]
                break
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UsageError(f"{path}: weights do not fit {spec.source} ({first})") from None
    return model
