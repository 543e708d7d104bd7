"""Our search space as an NNI 3.0 ``ModelSpace`` (optional extra ``acla-nas[nni]``), and reading
NNI's architecture parameters and samples back into our labels. See :mod:`nas.adapters.nni` and
``docs/nni.md``. NNI is imported only inside these functions.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

from nas.errors import UsageError

INSTALL_HINT = "pip install 'acla-nas[nni]' (nni==3.0 with pytorch-lightning)"


# ------------------------------------------------------------------------------ availability
def require_nni() -> Any:
    """Import NNI's NAS API (and pytorch-lightning) or fail with an install hint.

    Returns:
        The ``nni`` module.

    Raises:
        UsageError: NNI or pytorch-lightning is missing or cannot be imported.
    """
    try:
        import warnings

        with warnings.catch_warnings():
            # NNI 3.0 (2023) warns that torch.nn.Buffer & co. "are not nn.Modules" on new torch
            warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")
            import nni
            import nni.nas.nn.pytorch  # noqa: F401
            import pytorch_lightning  # noqa: F401
    except ImportError as e:
        raise UsageError(f"the NNI adapter needs NNI: {INSTALL_HINT} ({e})") from None
    return nni


# --------------------------------------------------------------------------------- the space
class _Skip(nn.Module):
    """The ``skip`` candidate: ``(feat (B, C, H, W), refs) -> feat``.

    Candidates take one argument, the pair ``(feat, refs)``: NNI's plain and frozen
    ``LayerChoice`` pass exactly one positional argument on.
    """

    def forward(self, inp: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        return inp[0]


class _OpView(nn.Module):
    """One candidate: a view of an operator of the shared :class:`nas.engine.network.InsertionPoint`.

    The operator is held outside the module tree (it is registered once, in the model space's
    :class:`nas.engine.network.AttentionNet`), so every key-count leaf of a point shares its weights
    and the state dict has no duplicates.

    Args:
        op: the operator module (``ACLA``, ``RELA``, ...).
        active_keys: for operators reading references, the key count per reference (the first
            ``k`` slots of the shared module; all 0 = the identity); ``None`` otherwise.

    Shapes:
        ``forward((feat (B, C, H, W), refs [R x (B, C, H, W)])) -> (B, C, H, W)``.
    """

    def __init__(self, op: nn.Module, active_keys: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self._op = (op,)
        self.active_keys = active_keys

    def forward(self, inp: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        feat, refs = inp
        op = self._op[0]
        if self.active_keys is None:
            return op(feat, [], ctx=None)
        if sum(self.active_keys) == 0:
            return feat
        return op(feat, refs, active_keys=self.active_keys)

    def extra_repr(self) -> str:
        return f"{type(self._op[0]).__name__}, active_keys={self.active_keys}"


def _check_supported(space) -> None:
    """Reject what a weighted-sum supernet cannot represent faithfully.

    Raises:
        UsageError: collaborative LCoA (its shared attention map depends on which LCoA runs
            first, but DARTS runs every candidate at every point).
    """
    for op in {op for p in space for op in p.ops}:
        if space.op_config(op).get("collaborative"):
            raise UsageError(f"space.op_config.{op}.collaborative: not supported by the NNI adapter "
                             "(DARTS evaluates every candidate, so the shared map has no meaning)")


@functools.lru_cache(maxsize=None)
def nni_model_classes() -> Any:
    """Define the NNI-dependent classes on first use (NNI is imported here, not at import time)."""
    require_nni()
    import torch.nn.functional as F
    from nni.mutable.utils import label as nni_label
    from nni.nas.evaluator.pytorch.lightning import LightningModule
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    from nas.engine.network import AttentionNet, InsertionPoint, build_backbone, supernet_op_kwargs
    from search_spaces.space import SKIP, SearchSpace

    def full_label(text: str):
        # NNI builds "a/b" labels from parts (a plain string may not contain "/"): our labels as-is
        return nni_label(text.split("/"))

    def keys_tree(space, p, op_mod: nn.Module, prefix: tuple[int, ...]) -> nn.Module:
        keyed = len(p.keys) > 1
        if not keyed:
            return _OpView(op_mod, tuple(p.keys[-1] for _ in p.refs))
        if len(prefix) == len(p.refs):
            return _OpView(op_mod, prefix)
        ref = p.refs[len(prefix)]
        return LayerChoice(OrderedDict((str(k), keys_tree(space, p, op_mod, (*prefix, k)))
                                       for k in p.keys), label=full_label(p.key_label(ref)))

    class AttentionModelSpace(ModelSpace):
        """Our search space as an NNI ``ModelSpace`` (labels exactly :meth:`SearchSpace.choices`).

        Args:
            space_cfg: the ``space`` block (:class:`search_spaces.space.SpaceConfig`).
            task: the task (:class:`nas.restoration.data.Task`).

        Attributes:
            space: the :class:`search_spaces.space.SearchSpace`.
            net: :class:`nas.engine.network.AttentionNet` holding the backbone and every candidate
                (the weights, registered once).
            choices: ``{point: LayerChoice}`` (``bNN/op`` with nested ``bNN/keys@REF``).

        Shapes:
            ``forward``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``.

        Raises:
            UsageError: bad space (see :class:`SearchSpace`), bad backbone keywords, or
                collaborative LCoA.
        """

        def __init__(self, space_cfg, task) -> None:
            super().__init__()
            try:
                backbone = build_backbone(space_cfg, task)
            except ValueError as e:
                raise UsageError(str(e)) from None
            space = SearchSpace(space_cfg, backbone.config.num_block)
            _check_supported(space)
            self.space = space
            self.task = task
            points = {p.name: InsertionPoint(p.refs, backbone.num_feat, supernet_op_kwargs(space, p))
                      for p in space}
            self.net = AttentionNet(backbone, points, space)
            choices = {}
            for p in space:
                cands: OrderedDict[str, nn.Module] = OrderedDict()
                for op in p.ops:
                    if op == SKIP:
                        cands[op] = _Skip()
                    elif space.uses_refs(op):
                        cands[op] = keys_tree(space, p, points[p.name].ops[op], ())
                    else:
                        cands[op] = _OpView(points[p.name].ops[op])
                choices[p.name] = LayerChoice(cands, label=full_label(p.op_label()))
            self.choices = nn.ModuleDict(choices)
            self.refs = {p.name: p.refs for p in space}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def insert(label, feat, taps):
                if label not in self.choices:
                    return feat
                return self.choices[label]((feat, [taps[r] for r in self.refs[label]]))

            return self.net.backbone(x, insert=insert)

        def set_tau(self, tau: float) -> None:
            """Set the operators' own Gumbel temperature (ACLA's key mask), as our supernet does."""
            for m in self.net.modules():
                if hasattr(m, "tau") and hasattr(m, "adaptive"):
                    m.tau = tau

    class RestorationModule(LightningModule):
        """NNI Lightning module: L1 loss, Adam + cosine schedule, optional E[F] penalty.

        NNI's DARTS calls ``training_step`` twice per batch: with index ``2i`` on the ``val``
        batch (the alpha step) and ``2i + 1`` on the ``train`` batch (the weight step).
        Our FLOPs penalty (:func:`nas.engine.objective.alpha_loss`, on ``softmax(alpha)``,
        differentiable) is added to the alpha step only.

        Args:
            lr: weight learning rate (Adam).
            total_steps: weight steps of the whole run (cosine schedule to ``0.1 * lr``).
            penalty: :class:`nas.config.PenaltyConfig`, or ``None`` for plain L1.
            cost: :class:`nas.engine.cost.CostModel` of the space (needed with a penalty).
            tau_schedule: ``(start, end)``: ACLA's key-mask temperature, linear per epoch.
        """

        def __init__(self, lr: float, total_steps: int, penalty=None, cost=None,
                     tau_schedule: tuple[float, float] | None = None) -> None:
            super().__init__()
            self.lr = lr
            self.total_steps = total_steps
            self.penalty = penalty
            self.cost = cost
            self.base_flops = float(cost.fixed) if cost is not None else None
            self.tau_schedule = tau_schedule

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx: int):
            from nas.engine.objective import alpha_loss

            lq, hr = batch
            out = self.model(lq)
            l1 = F.l1_loss(out.float(), hr)
            arch_step = batch_idx % 2 == 0
            self.log("l1_val" if arch_step else "l1", l1.detach())
            if self.penalty is not None and arch_step:
                e_flops = self.cost.expected(arch_probs(self.model))
                self.log("e_gflops", float(e_flops.detach()) / 1e9)
                return alpha_loss(l1, e_flops, self.penalty, self.base_flops)
            return l1

        def on_train_epoch_start(self) -> None:
            if self.tau_schedule is not None:
                start, end = self.tau_schedule
                total = max(int(self.trainer.max_epochs), 1)
                epoch = min(int(self.trainer.current_epoch), total)
                self.model.set_tau((1 - epoch / total) * (start - end) + end)

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.total_steps, 1),
                                                               eta_min=self.lr * 0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class NS:
        pass

    ns = NS()
    ns.AttentionModelSpace = AttentionModelSpace
    ns.RestorationModule = RestorationModule
    return ns


def to_model_space(space_cfg, task):
    """Our search space as an NNI ``ModelSpace`` (an ``AttentionModelSpace`` instance).

    Args:
        space_cfg: the ``space`` block (:class:`search_spaces.space.SpaceConfig`).
        task: :class:`nas.restoration.data.Task`.

    Returns:
        A ``nni.nas.nn.pytorch.ModelSpace`` whose mutable labels are exactly the labels of
        :meth:`search_spaces.space.SearchSpace.choices` (``bNN/op``, ``bNN/keys@REF``);
        ``forward``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``.

    Raises:
        UsageError: NNI not installed, bad space or backbone, collaborative LCoA.
    """
    return nni_model_classes().AttentionModelSpace(space_cfg, task)


# ------------------------------------------------------------------------ alpha and samples
def mixed_layers(model: nn.Module) -> dict[str, Any]:
    """``{label: one DifferentiableMixedLayer}`` of a model space mutated by DARTS/GumbelDARTS."""
    out: dict[str, Any] = {}
    for m in model.modules():
        alpha = getattr(m, "_arch_alpha", None)
        label = getattr(m, "label", None)
        if isinstance(alpha, torch.Tensor) and isinstance(label, str):
            out.setdefault(label, m)
    return out


def _value_order(space, label: str, names: list) -> list[int]:
    """Index into NNI's candidate ``names`` for each value of our choice ``label``."""
    choice = {c.label: c for c in space.choices()}[label]
    pos = {str(n): i for i, n in enumerate(names)}
    return [pos[str(v)] for v in choice.values]


def arch_probs(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{label: softmax(alpha)}`` of a DARTS/GumbelDARTS-mutated ``AttentionModelSpace``.

    Probabilities are deterministic (plain softmax, also for GumbelDARTS, whose own
    ``export_probs`` draws Gumbel noise), differentiable in alpha, in the value order of
    :meth:`SearchSpace.choices` - the input :meth:`nas.engine.cost.CostModel.expected` expects.

    Raises:
        UsageError: the model has no architecture parameters (not mutated by a strategy).
    """
    layers = mixed_layers(model)
    if not layers:
        raise UsageError("model: no architecture parameters (run a DARTS/GumbelDARTS strategy first)")
    space = model.space
    out = {}
    for label, m in layers.items():
        order = _value_order(space, label, list(m.names))
        out[label] = torch.softmax(m._arch_alpha, dim=-1)[order]
    return out


def probs_dict(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{label: {value: probability}}`` (JSON-ready, the ArchSpec ``probs`` format)."""
    choices = {c.label: c for c in model.space.choices()}
    return {label: {str(v): round(float(p), 6) for v, p in zip(choices[label].values, pr.detach())}
            for label, pr in arch_probs(model).items()}


def sample_to_arch(space, sample: Mapping[str, Any]) -> dict[str, Any]:
    """Map an NNI sample (``export_top_models(formatter='dict')``) to our architecture dict.

    Candidate names come back as strings (``"acla"``, ``"4"``); key counts become ``int``.
    The result is validated and canonical (ACLA reading no key is written as ``skip``).

    Args:
        space: the :class:`search_spaces.space.SearchSpace`.
        sample: ``{label: candidate name}``.

    Returns:
        ``{label: value}`` accepted by :func:`nas.engine.network.build_fixed`.

    Raises:
        UsageError: unknown label or a value the space does not offer (names the label).
    """
    from nas.engine.network import canonical_arch

    choices = {c.label: c for c in space.choices()}
    arch: dict[str, Any] = {}
    for label, name in sample.items():
        c = choices.get(label)
        if c is None:
            raise UsageError(f"NNI sample: unknown label {label!r}")
        by_name = {str(v): v for v in c.values}
        if str(name) not in by_name:
            raise UsageError(f"NNI sample: {label}={name!r} is not offered; offered: {list(c.values)}")
        arch[label] = by_name[str(name)]
    return canonical_arch(space, space.validate(arch))


