"""NNI 3.0 adapter (optional extra ``acla-nas[nni]``): our search space as an NNI ``ModelSpace``.

The adapter lets NNI's one-shot strategies ``DARTS`` and ``GumbelDARTS`` search the same space
as :class:`nas.engine.supernet_search.SupernetSearch`, on the same data and step budget, and returns an
:class:`nas.engine.archspec.ArchSpec` that :func:`nas.build_model` accepts. It is a comparison tool:
our own search (straight-through Gumbel, one path per step, a differentiable FLOPs penalty)
stays the main path. See ``docs/nni.md`` for installation, the mapping and the limitations.

NNI is imported only inside the functions of this module, and nothing in ``nas`` imports this
module at import time, so ``import nas`` / ``nas.cli`` never need NNI (tested).

What maps onto what:

* backbone and operators: built by our constructors (:func:`nas.engine.network.build_backbone`,
  :func:`nas.engine.network.supernet_op_kwargs`, :data:`search_spaces.operators.OPERATORS`) into an
  :class:`nas.engine.network.AttentionNet` held by the model space, exactly as in
  :class:`nas.engine.supernet.Supernet`, so the trained weights can be inherited by the fixed network;
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
import time
from pathlib import Path

import torch

from nas.adapters.nni_space import (
    INSTALL_HINT,
    arch_probs,
    mixed_layers,
    nni_model_classes,
    probs_dict,
    require_nni,
    sample_to_arch,
    to_model_space,
)
from nas.errors import UsageError

#: strategy name -> (NNI class name in ``nni.nas.strategy``, provenance name)
STRATEGIES = {"darts": ("DARTS", "nni-darts"), "gumbel": ("GumbelDARTS", "nni-gumbel-darts")}


# -------------------------------------------------------------------------------- data
class _SamplerBatches(torch.utils.data.Dataset):
    """``length`` batches drawn from a :class:`nas.restoration.patches.PatchStream` (index ignored).

    Used with ``DataLoader(batch_size=None, num_workers=0)``: items are whole batches
    ``(lq (B, 3, p/s, p/s), hr (B, 3, p, p))`` drawn in order from the sampler's own seeded
    generator, as :class:`nas.engine.supernet_search.SupernetSearch` draws them.
    """

    def __init__(self, sampler, length: int) -> None:
        self.sampler = sampler
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int):
        return self.sampler.next()


# --------------------------------------------------------------------------------- run
def run_nni(strategy: str, cfg, out_dir: str | Path, *, steps: int | None = None,
            epochs: int | None = None, penalty: bool = False, device: str = "cpu",
            progress: bool = False, cache=None):
    """Search ``cfg``'s space with NNI's ``DARTS`` or ``GumbelDARTS`` and export an ArchSpec.

    The budget matches :class:`nas.engine.supernet_search.SupernetSearch`: ``steps`` batches,
    each one weight step on a train batch and (after warm-up) one alpha step on a val batch, with the same
    ``PatchStream`` data, batch size, patch size, train/val image split, weight and alpha
    learning rates, gradient clipping and cosine schedule. NNI schedules in epochs, so
    ``steps`` is split into ``epochs`` epochs of ``steps // epochs`` batches; warm-up
    (``search.largest_path_steps``: alpha frozen) and GumbelDARTS' temperature
    (``search.tau.start -> end``, linear per epoch - NNI has no exponential schedule) are rounded
    to whole epochs. The derived architecture is scored by the same protocol as ours
    (:mod:`nas.engine.scoring`, ``score.seeds`` seeds).

    Outputs in ``out_dir``: ``arch.json`` (the ArchSpec), ``result.json`` (scores, GFLOPs,
    seconds), ``nni/`` (NNI's experiment directory and manifest, Lightning's ``metrics.csv`` with
    the per-step probabilities). Nothing is written to ``~/nni-experiments``.

    Args:
        strategy: ``"darts"`` or ``"gumbel"``.
        cfg: the run config (:class:`nas.config.Config`).
        out_dir: run directory (created).
        steps: batches in total (default ``search.supernet_steps + search.alpha_steps``: our
            search's weight and alpha steps together).
        epochs: NNI epochs (default: ``min(steps, 10)``).
        penalty: add our differentiable ``cfg.search.penalty`` on E[F] to the alpha step.
            Without it the search is accuracy-only. NNI's own ``penalty=`` is not used: it sends
            no gradient to alpha (``export_probs()`` returns detached floats).
        device: ``"cpu"`` or ``"cuda"``.
        progress: show Lightning's progress bar.
        cache: a :class:`nas.engine.scoring.ScoreCache` of known scores (default: a new one).

    Returns:
        The :class:`nas.engine.archspec.ArchSpec` (also saved as ``out_dir/arch.json``); its
        ``cost.flops`` is :meth:`nas.engine.flops.CostModel.exact` of the choices (FLOPs = 2 x MACs per
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
    steps = s.supernet_steps + s.alpha_steps if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"steps: must be an int >= 1, got {steps!r}")
    epochs = min(steps, 10) if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= steps:
        raise UsageError(f"epochs: must be an int in 1..steps ({steps}), got {epochs!r}")
    nni = require_nni()
    ns = nni_model_classes()

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

    from nas.engine.export import export_result
    from nas.engine.flops import CostModel
    from nas.engine.network import build_fixed, inherit_weights
    from nas.engine.objective import alpha_loss
    from nas.engine.scoring import load_splits
    from nas.restoration.patches import PatchStream

    out = Path(out_dir)
    nni_dir = out / "nni"
    nni_dir.mkdir(parents=True, exist_ok=True)
    task = cfg.task
    t0 = time.perf_counter()

    # data: the same images, split, degradation and samplers as SupernetSearch
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg)  # the same split as our search: NNI trains on train, alpha on val
    train_pairs, val_pairs = splits.train, splits.val
    p = cfg.data.patch_size
    spe = steps // epochs
    bs = cfg.data.batch_size
    train_loader = DataLoader(_SamplerBatches(PatchStream(train_pairs, task, p, bs, seed=cfg.seed,
                                                          augment=cfg.data.augment),
                                              spe), batch_size=None)
    val_loader = DataLoader(_SamplerBatches(PatchStream(val_pairs, task, p, bs, seed=cfg.seed + 1,
                                                        augment=cfg.data.augment),
                                            spe), batch_size=None)

    model_space = ns.AttentionModelSpace(cfg.space, task)
    space = model_space.space
    lr_size = tuple(s.lr_size) if s.lr_size else None
    cost = CostModel(space, task, lr_size)
    if penalty:  # surface a bad penalty config now, not from inside Lightning
        base = torch.tensor(float(cost.fixed), dtype=torch.float64)
        alpha_loss(torch.zeros(()), base, s.penalty, float(cost.fixed))
    tau = (float(s.tau.start), float(s.tau.end))
    if not tau[0] >= tau[1] > 0:
        raise UsageError(f"search.tau: NNI anneals linearly from start to end and needs "
                         f"start >= end > 0, got {tau[0]} -> {tau[1]}")
    warmup_epochs = min(epochs, round(s.largest_path_steps / spe)) if s.largest_path_steps else 0

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
    seconds = time.perf_counter() - t0
    name = STRATEGIES[strategy][1]
    provenance = {
        "strategy": name, "nni": nni.__version__, "pytorch_lightning": pl.__version__,
        "run": str(out), "seed": cfg.seed, "steps": spe * epochs, "epochs": epochs,
        "steps_per_epoch": spe, "warmup_epochs": warmup_epochs,
        "tau": list(tau) if strategy == "gumbel" else None,
        "penalty": s.penalty.kind if penalty else "none",
        "lambda": s.penalty.lam if penalty else 0.0, "nni_sample": dict(sample)}
    res = export_result(fixed, arch, task=task, space_cfg=cfg.space, cost=cost, probs=probs,
                        out_dir=out, provenance=provenance, steps=spe * epochs, seconds=seconds,
                        extra_result={"strategy": name})
    from nas.engine.export import record_scores
    from nas.engine.scoring import ScoreCache
    from nas.restoration.evaluate import Convention

    scores = (cache or ScoreCache()).scores(cfg, space, arch, range(cfg.score.seeds), device=dev)
    record_scores(res, out, scores, Convention.for_task(task).describe())
    from nas.engine.archspec import load_archspec

    return load_archspec(res.arch_path)


__all__ = ["INSTALL_HINT", "STRATEGIES", "arch_probs", "mixed_layers", "probs_dict",
           "require_nni", "run_nni", "sample_to_arch", "to_model_space"]
