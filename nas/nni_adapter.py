"""NNI 3.0 adapter (optional extra ``acla-nas[nni]``): our search space as an NNI ``ModelSpace``.

The adapter lets NNI's one-shot strategies ``DARTS`` and ``GumbelDARTS`` search the same space
as :class:`nas.search.SearchRun`, on the same data and step budget, and returns an
:class:`nas.archspec.ArchSpec` that :func:`nas.build_model` accepts. It is a comparison tool:
our own search (straight-through Gumbel, one path per step, a differentiable FLOPs penalty)
stays the main path. See ``docs/nni.md`` for installation, the mapping and the limitations.

NNI is imported only inside the functions of this module, and nothing in ``nas`` imports this
module at import time, so ``import nas`` / ``nas.cli`` never need NNI (tested).

What maps onto what:

* backbone and operators: built by our constructors (:func:`nas.network.build_backbone`,
  :func:`nas.network.supernet_op_kwargs`, :data:`search_spaces.operators.OPERATORS`) into an
  :class:`nas.network.AttentionNet` held by the model space, exactly as in
  :class:`nas.supernet.Supernet`, so the trained weights can be inherited by the fixed network;
* ``bNN/op`` -> ``LayerChoice({"skip": ..., "acla": ..., ...}, label="bNN/op")``;
* ``bNN/keys@REF`` -> nested ``LayerChoice({"0": ..., "2": ..., ...}, label="bNN/keys@REF")``,
  one level per reference layer; the leaves are views of the *one* ACLA module of the point
  (built with the largest key count, smaller counts use its first slots), so all key counts
  share weights as in our supernet. A label that occurs in several subtrees is one NNI
  categorical with one alpha. NNI names candidates by strings, so key counts come back as
  ``"4"`` and are converted to ``int``.

Why nested ``LayerChoice`` and not ``nni.choice("bNN/keys@REF", [...])``: NNI 3.0's DARTS turns
a categorical argument into a weight-entangled "mixed operation" only for its built-in
``Mutable*`` layers (``MutableConv2d``, ``MutableLinear``...); a categorical inside our ACLA
would be a "dangling mutable" that DARTS rejects. Nested ``LayerChoice`` s use only NNI's
built-in primitives, so DARTS and GumbelDARTS handle them unchanged (NNI's other one-shot
strategies should too; they are not tested here). The price is DARTS' own: every forward
computes every candidate, i.e. ``|keys| ** R`` ACLA evaluations per insertion point (16 for 4
key counts and R = 2 references) plus the other operators - much slower than our single-path
search.

Public API: :func:`to_model_space`, :func:`run_nni`, :func:`sample_to_arch`, :func:`arch_probs`,
:func:`probs_dict`, :func:`require_nni`.
"""

from __future__ import annotations

import functools
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from nas.errors import UsageError

#: strategy name -> (NNI class name in ``nni.nas.strategy``, provenance name)
STRATEGIES = {"darts": ("DARTS", "nni-darts"), "gumbel": ("GumbelDARTS", "nni-gumbel-darts")}

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
    """One candidate: a view of an operator of the shared :class:`nas.network.InsertionPoint`.

    The operator is held outside the module tree (it is registered once, in the model space's
    :class:`nas.network.AttentionNet`), so every key-count leaf of a point shares its weights
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
def _classes() -> Any:
    """Define the NNI-dependent classes on first use (NNI is imported here, not at import time)."""
    require_nni()
    import torch.nn.functional as F
    from nni.mutable.utils import label as nni_label
    from nni.nas.evaluator.pytorch.lightning import LightningModule
    from nni.nas.nn.pytorch import LayerChoice, ModelSpace

    from nas.network import AttentionNet, InsertionPoint, build_backbone, supernet_op_kwargs
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
            task: the task (:class:`nas.data.Task`).

        Attributes:
            space: the :class:`search_spaces.space.SearchSpace`.
            net: :class:`nas.network.AttentionNet` holding the backbone and every candidate
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
        Our FLOPs penalty (:func:`nas.search.flops_penalty`, on ``softmax(alpha)``,
        differentiable) is added to the alpha step only.

        Args:
            lr: weight learning rate (Adam).
            total_steps: weight steps of the whole run (cosine schedule to ``0.1 * lr``).
            penalty: :class:`nas.config.PenaltyConfig`, or ``None`` for plain L1.
            cost: :class:`nas.cost.CostModel` of the space (needed with a penalty).
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
            from nas.search import flops_penalty

            lq, hr = batch
            out = self.model(lq)
            l1 = F.l1_loss(out.float(), hr)
            arch_step = batch_idx % 2 == 0
            self.log("l1_val" if arch_step else "l1", l1.detach())
            if self.penalty is not None and arch_step:
                e_flops = self.cost.expected(arch_probs(self.model))
                self.log("e_gflops", float(e_flops.detach()) / 1e9)
                return flops_penalty(l1, e_flops, self.penalty, self.base_flops)
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
        task: :class:`nas.data.Task`.

    Returns:
        A ``nni.nas.nn.pytorch.ModelSpace`` whose mutable labels are exactly the labels of
        :meth:`search_spaces.space.SearchSpace.choices` (``bNN/op``, ``bNN/keys@REF``);
        ``forward``: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, sH, sW)``.

    Raises:
        UsageError: NNI not installed, bad space or backbone, collaborative LCoA.
    """
    return _classes().AttentionModelSpace(space_cfg, task)


# ------------------------------------------------------------------------ alpha and samples
def _mixed_layers(model: nn.Module) -> dict[str, Any]:
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
    :meth:`SearchSpace.choices` - the input :meth:`nas.cost.CostModel.expected` expects.

    Raises:
        UsageError: the model has no architecture parameters (not mutated by a strategy).
    """
    layers = _mixed_layers(model)
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
        ``{label: value}`` accepted by :func:`nas.network.build_fixed`.

    Raises:
        UsageError: unknown label or a value the space does not offer (names the label).
    """
    from nas.network import canonical_arch

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


# -------------------------------------------------------------------------------- data
class _SamplerBatches(torch.utils.data.Dataset):
    """``length`` batches drawn from a :class:`nas.data.PatchSampler` (index ignored).

    Used with ``DataLoader(batch_size=None, num_workers=0)``: items are whole batches
    ``(lq (B, 3, p/s, p/s), hr (B, 3, p, p))`` drawn in order from the sampler's own seeded
    generator, as :class:`nas.search.SearchRun` draws them.
    """

    def __init__(self, sampler, batch_size: int, length: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int):
        return self.sampler.sample(self.batch_size)


# --------------------------------------------------------------------------------- run
def run_nni(strategy: str, cfg, out_dir: str | Path, *, steps: int | None = None,
            epochs: int | None = None, penalty: bool = False, device: str = "cpu",
            progress: bool = False):
    """Search ``cfg``'s space with NNI's ``DARTS`` or ``GumbelDARTS`` and export an ArchSpec.

    The budget matches :class:`nas.search.SearchRun`: ``steps`` batches, each one weight step
    on a train batch and (after warm-up) one alpha step on a val batch, with the same
    ``PatchSampler`` data, batch size, patch size, train/val image split, weight and alpha
    learning rates, gradient clipping and cosine schedule. NNI schedules in epochs, so
    ``steps`` is split into ``epochs`` epochs of ``steps // epochs`` batches; warm-up
    (``search.warmup_steps``) and GumbelDARTS' temperature (``search.tau.start -> end``, linear
    per epoch - NNI has no exponential schedule) are rounded to whole epochs.

    Outputs in ``out_dir``: ``arch.json`` (the ArchSpec), ``result.json`` (validation PSNR of the
    derived network with inherited weights, GFLOPs, seconds), ``nni/`` (NNI's experiment
    directory and manifest, Lightning's ``metrics.csv`` with the per-step probabilities).
    Nothing is written to ``~/nni-experiments``.

    Args:
        strategy: ``"darts"`` or ``"gumbel"``.
        cfg: the run config (:class:`nas.config.Config`).
        out_dir: run directory (created).
        steps: batches in total (default ``cfg.search.steps``).
        epochs: NNI epochs (default: ``min(steps, 10)``).
        penalty: add our differentiable ``cfg.search.penalty`` on E[F] to the alpha step.
            Without it the search is accuracy-only. NNI's own ``penalty=`` is not used: it sends
            no gradient to alpha (``export_probs()`` returns detached floats).
        device: ``"cpu"`` or ``"cuda"``.
        progress: show Lightning's progress bar.

    Returns:
        The :class:`nas.archspec.ArchSpec` (also saved as ``out_dir/arch.json``); its
        ``cost.flops`` is :meth:`nas.cost.CostModel.exact` of the choices (FLOPs = 2 x MACs per
        image at the reference input size), checked against the measured FLOPs of the network.

    Raises:
        UsageError: NNI missing, unknown strategy or device, ``steps``/``epochs`` < 1 or
            ``epochs > steps``, bad config or space, unsupported operator config.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"strategy: {strategy!r} is not one of {sorted(STRATEGIES)}")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"device: 'cpu' or 'cuda', got {device!r}")
    s = cfg.search
    steps = s.steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps: must be an int >= 1, got {steps!r}")
    epochs = min(steps, 10) if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= steps:
        raise UsageError(f"epochs: must be an int in 1..steps ({steps}), got {epochs!r}")
    nni = require_nni()
    ns = _classes()

    import contextlib
    import logging
    import warnings
    from unittest import mock

    import nni.nas.experiment.experiment as nni_experiment_mod
    import pytorch_lightning as pl
    from nni.nas.evaluator.pytorch.lightning import DataLoader, Lightning, Trainer
    from nni.nas.experiment import NasExperiment
    from nni.nas.strategy import DARTS, GumbelDARTS
    from nni.tools.nnictl.config_utils import Experiments
    from pytorch_lightning.loggers import CSVLogger

    from nas.cost import CostModel
    from nas.data import PatchSampler, make_pairs, split_names
    from nas.io import atomic_write_json
    from nas.network import build_fixed, inherit_weights
    from nas.search import flops_penalty, git_commit, validate_on_crops

    out = Path(out_dir)
    nni_dir = out / "nni"
    nni_dir.mkdir(parents=True, exist_ok=True)
    task = cfg.task_obj()
    t0 = time.perf_counter()

    # data: the same images, split, degradation and samplers as SearchRun
    torch.manual_seed(cfg.seed)
    images = cfg.data.load()
    train_names, val_names = split_names(list(images), cfg.data.val_fraction, cfg.seed)
    train_pairs = make_pairs({n: images[n] for n in train_names}, task, cfg.seed)
    val_pairs = make_pairs({n: images[n] for n in val_names}, task, cfg.seed)
    p = cfg.data.patch_size
    spe = steps // epochs
    train_loader = DataLoader(_SamplerBatches(PatchSampler(train_pairs, task, p, seed=cfg.seed),
                                              cfg.data.batch_size, spe), batch_size=None)
    val_loader = DataLoader(_SamplerBatches(PatchSampler(val_pairs, task, p, seed=cfg.seed + 1),
                                            cfg.data.batch_size, spe), batch_size=None)

    model_space = ns.AttentionModelSpace(cfg.space, task)
    space = model_space.space
    lr_size = tuple(s.lr_size) if s.lr_size else None
    cost = CostModel(space, task, lr_size)
    if penalty:  # surface a bad penalty config now, not from inside Lightning
        base = torch.tensor(float(cost.fixed), dtype=torch.float64)
        flops_penalty(torch.zeros(()), base, s.penalty, float(cost.fixed))
    tau = (float(s.tau.start), float(s.tau.end))
    if not tau[0] >= tau[1] > 0:
        raise UsageError(f"search.tau: NNI anneals linearly from start to end and needs "
                         f"start >= end > 0, got {tau[0]} -> {tau[1]}")
    warmup_epochs = min(epochs, round(s.warmup_steps / spe)) if s.warmup_steps else 0

    with contextlib.ExitStack() as stack:
        # NNI 3.0 and Lightning are chatty on new torch: keep their warnings and info lines out
        # of our output (NNI's own log still goes to nni/<id>/log/experiment.log)
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", module=r"(nni|pytorch_lightning|lightning_fabric|torch)\b")
        warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers).*")
        for name in ("nni", "pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
            lg = logging.getLogger(name)
            stack.callback(lg.setLevel, lg.level)
            lg.setLevel(logging.WARNING if progress else logging.ERROR)
        # keep NNI's experiment manifest under out_dir instead of ~/nni-experiments
        manifest = functools.partial(Experiments, home_dir=str(nni_dir))
        stack.enter_context(mock.patch.object(nni_experiment_mod, "Experiments", manifest))

        module = ns.RestorationModule(s.lr, spe * epochs, s.penalty if penalty else None,
                                      cost if penalty else None, tau)
        trainer = Trainer(
            max_epochs=epochs, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
            logger=CSVLogger(str(nni_dir), name="lightning", version=""),
            enable_checkpointing=False, enable_progress_bar=progress,
            enable_model_summary=False, default_root_dir=str(nni_dir), num_sanity_val_steps=0,
            limit_val_batches=0, log_every_n_steps=1,
        )
        evaluator = Lightning(module, trainer, train_dataloaders=train_loader,
                              val_dataloaders=val_loader)
        common = dict(arc_learning_rate=s.alpha_lr, gradient_clip_val=s.grad_clip or None,
                      warmup_epochs=warmup_epochs, log_prob_every_n_step=1)
        if strategy == "darts":
            strat = DARTS(**common)
        else:
            strat = GumbelDARTS(temperature=tau, **common)
        exp = NasExperiment(model_space, evaluator, strat)
        exp.config.experiment_working_directory = str(nni_dir)
        exp.config.log_level = "warning"
        try:
            exp.run()
            sample = exp.export_top_models(formatter="dict")[0]
        finally:
            # bookkeeping only (checkpoint of the strategy state, manifest, log handler); an
            # error here must not hide the error of the run itself
            with contextlib.suppress(Exception):
                exp.stop()

    arch = sample_to_arch(space, sample)
    probs = probs_dict(model_space)
    fixed = build_fixed(space, task, arch)
    inherit_weights(model_space.net, fixed)
    dev = torch.device(device)
    fixed = fixed.to(dev)
    psnr = validate_on_crops(fixed, val_pairs[: s.val_images], task, max(p, 96),
                             lambda t: t.to(dev))
    flops = cost.exact(arch)
    params = sum(q.numel() for q in fixed.parameters())
    h, w = cost.lr_size
    _check_measured(fixed, flops, (h, w), arch)

    from nas.archspec import ArchSpec, backbone_block, space_block

    seconds = time.perf_counter() - t0
    name = STRATEGIES[strategy][1]
    spec = ArchSpec(
        task=task.to_dict(),
        backbone=backbone_block(model_space.net.backbone.config),
        space=space_block(cfg.space),
        choices=arch,
        probs=probs,
        cost={"flops": flops, "gflops": flops / 1e9, "params": params, "lr_size": [h, w],
              "convention": "FLOPs = 2 x MACs, per image"},
        provenance={
            "strategy": name, "nni": nni.__version__, "pytorch_lightning": pl.__version__,
            "run": str(out), "seed": cfg.seed, "steps": spe * epochs, "epochs": epochs,
            "steps_per_epoch": spe, "warmup_epochs": warmup_epochs,
            "tau": list(tau) if strategy == "gumbel" else None,
            "penalty": s.penalty.kind if penalty else "none",
            "lambda": s.penalty.lam if penalty else 0.0, "nni_sample": dict(sample),
            "git": git_commit(),
        },
    )
    spec.save(out / "arch.json")
    atomic_write_json(out / "result.json", {
        "strategy": name, "psnr_db": psnr, "gflops": flops / 1e9, "params": params,
        "steps": spe * epochs, "seconds": seconds,
        "val_images": val_names[: s.val_images]})
    return spec


def _check_measured(fixed: nn.Module, flops: int, lr_size: tuple[int, int], arch) -> None:
    """The analytic FLOPs must equal the measured FLOPs of the exported network (meta tensors)."""
    import copy

    from nas.flops import measure_flops

    measured = measure_flops(copy.deepcopy(fixed).to("meta"),
                             torch.empty(1, 3, *lr_size, device="meta"))
    if measured != flops:  # pragma: no cover - guarded by tests of nas.cost
        raise RuntimeError(f"analytic FLOPs {flops} != measured {measured} for {json.dumps(arch)}")


__all__ = ["STRATEGIES", "require_nni", "to_model_space", "arch_probs", "probs_dict",
           "sample_to_arch", "run_nni"]

