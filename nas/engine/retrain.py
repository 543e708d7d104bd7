"""Train a fixed (exported) network from scratch, then evaluate it on benchmark sets.

The EDSR/BasicSR recipe: Adam, multi-step learning-rate decay (``milestones`` as fractions of
``steps`` or absolute iterations, ``gamma``), L1 loss, optional gradient-norm clipping, an
exponential moving average of the weights (``ema``, decay 0.999 by default; ``params_ema`` in
the weight files, validated and evaluated as its own network), validation every ``val_every``
steps on a benchmark set (PSNR, the task's convention), checkpoint every ``checkpoint_every``
steps. Training patches come from :class:`nas.restoration.patches.PatchStream` (DataLoader
workers; the patches of step ``t`` depend on ``(seed, t)`` only, so a resumed run sees the
uninterrupted run's batches). On CUDA: bf16 autocast of the forward pass (the loss, ACLA's
sampling offsets and the optimiser stay fp32) and channels_last memory format. Under
``torchrun`` every rank trains on its shard of each global batch with averaged gradients; rank
0 validates and writes. ``tensorboard: true`` logs the loss, learning rate and validation PSNR
to ``tb/`` (the optional ``tensorboard`` extra). Files in the run directory::

    retrain.pt       full training state (model, EMA, optimiser, scheduler, RNG, stream, step, best)
    model_last.pt    {"params": state_dict, "params_ema": ...} of the last step (BasicSR format)
    model_best.pt    the same with the best validation PSNR (of the EMA weights when kept)
    val.jsonl        step, l1, val_psnr, val_psnr_ema
    eval.csv         per-image PSNR/SSIM on ``eval_sets`` after training; eval_summary.csv;
                     eval_ema.csv and eval_summary_ema.csv for the EMA weights
    tb/              TensorBoard events (optional)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nas.config import Config, dump_config
from nas.config_checks import check_retrain
from nas.engine import distributed as dist
from nas.engine.archspec import ArchSpec, build_model
from nas.engine.objective import batch_psnr, l1_train_step
from nas.engine.runlog import RunLog
from nas.errors import UsageError
from nas.io import atomic_torch_save, atomic_write_text, load_checkpoint, truncate_jsonl
from nas.restoration.data import make_pairs
from nas.restoration.evaluate import evaluate_sets, model_restore_fn, per_set_means
from nas.restoration.patches import PatchStream
from nas.runtime import rng_state, set_rng_state

log = logging.getLogger("acla_nas.retrain")


def milestones_of(values: list, steps: int) -> list[int]:
    """Learning-rate milestones as iterations: fractions of ``steps`` (< 1) or iterations, sorted,
    within ``(0, steps)``; default halvings at 50 % and 75 %."""
    out = []
    for v in values or [0.5, 0.75]:
        out.append(int(round(v * steps)) if isinstance(v, float) and v < 1 else int(v))
    return sorted(set(m for m in out if 0 < m < steps))


def retrain(spec: ArchSpec, cfg: Config, out_dir: str | Path, *, data_root: Path | None = None,
            device: torch.device | str = "cpu", progress: bool = True,
            inherit: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``spec``'s network on ``cfg.data`` images, validate and evaluate.

    Under ``torchrun`` every rank trains on its shard of each global batch
    (:mod:`nas.engine.distributed`) and rank 0 validates, saves and evaluates.

    Args:
        spec: the architecture.
        cfg: run config (its ``data`` and ``retrain`` blocks; the task is the ArchSpec's, a
            differing ``cfg.task`` is logged and ignored).
        out_dir: run directory; an existing ``retrain.pt`` written with the same config resumes.
        data_root: benchmark data for validation/evaluation (``None``: validate on centre crops
            of the training images and skip the benchmark evaluation).
        device: torch device.
        progress: tqdm bar.
        inherit: optional supernet checkpoint (``supernet.pt``) to initialise from.
        stop_after: stop once this many steps are done (simulates a killed run in tests); a
            later call continues from the last checkpoint.

    Returns:
        ``{"best_val_psnr_db", "steps", "seconds", "eval": [per-set rows], "eval_ema": [...]}``
        (``eval_ema`` with an EMA).

    Raises:
        UsageError: bad config, unreadable checkpoint, missing data, TensorBoard
            asked for but not installed.
        DivergedError: the loss became NaN or infinite.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from nas.restoration.patches import MemorySource, folder_source

    out = Path(out_dir)
    main = dist.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    task = spec.task_obj()
    if cfg.task.to_dict() != task.to_dict():
        log.info("retrain: using the ArchSpec's task %s", task.to_dict())
    rc = cfg.retrain
    check_retrain(rc)
    torch.manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    cuda = device.type == "cuda"
    if rc.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last)
    if inherit:
        inherit_from_supernet(model, spec, Path(inherit))
    d = cfg.data
    n_images = len(d.image_sizes())
    if d.disk_backed(n_images):
        source = folder_source(d.source, task, d.images or None, d.lr_source)
        check_pairs = None
    else:
        check_pairs = make_pairs(d.load(), task, cfg.seed)
        source = MemorySource(check_pairs)
    stream = PatchStream(source, task, d.patch_size, d.batch_size, seed=cfg.seed,
                         workers=d.workers, augment=d.augment)
    val_pairs = None
    if data_root is not None and main:
        from nas.restoration.images import load_set_with_gray

        imgs, gray = load_set_with_gray(data_root, rc.val_set)
        val_pairs = make_pairs(imgs, task, cfg.seed, gray=gray)
    opt = torch.optim.Adam(model.parameters(), lr=rc.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones_of(rc.milestones, rc.steps),
                                                 gamma=rc.gamma)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(rc.ema)) if rc.ema else None
    use_amp = rc.amp and cuda
    step, best = 0, -float("inf")
    state_path = out / "retrain.pt"
    cfg_dict = {"config": cfg.to_dict(), "arch": spec.to_dict()}
    st = dist.broadcast(load_checkpoint(state_path) if main else None)
    if st is not None:
        if st.get("setup") != cfg_dict:
            raise UsageError(f"{state_path}: written for another config/arch; use another --out")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        stream.load_state_dict(st["stream"])
        if ema is not None:
            ema.load_state_dict(st["ema"])
        set_rng_state(st["rng"])
        step, best = st["step"], st["best"]
        if main:
            truncate_jsonl(out / "val.jsonl", step)
    elif main:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        spec.save(out / "arch.json")
    vlog = RunLog(out / "val.jsonl", out / "tb" if rc.tensorboard else None,
                  "retrain.tensorboard", phase="metrics")
    tb = vlog.tb
    t0 = time.perf_counter()
    bar = tqdm(total=rc.steps, initial=step, desc="retrain", unit="step",
               disable=not (progress and main), dynamic_ncols=True)

    def weights() -> dict:
        w = {"params": model.state_dict()}
        if ema is not None:
            w["params_ema"] = ema.module.state_dict()
        return w

    try:
        while step < rc.steps:
            model.train()
            lq, hr = stream.next()
            lq, hr = lq.to(device), hr.to(device)
            if rc.channels_last and cuda:
                lq = lq.contiguous(memory_format=torch.channels_last)
            loss, sr = l1_train_step(model, opt, lq, hr, amp=use_amp, grad_clip=rc.grad_clip,
                                     what=f"retrain step {step}")
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            l1 = dist.mean_over_ranks(float(loss))
            bar.update(1)
            bar.set_postfix(l1=f"{l1:.4f}", psnr=f"{batch_psnr(sr, hr):.2f}")
            if tb is not None:
                tb.add_scalar("losses/l_pix", l1, step)
                tb.add_scalar("lr", sched.get_last_lr()[0], step)
            if step % rc.val_every == 0 or step == rc.steps:
                if main:
                    row = {"step": step, "l1": l1,
                           "val_psnr": _validate(model, val_pairs, check_pairs, task, device)}
                    if ema is not None:
                        row["val_psnr_ema"] = _validate(ema.module, val_pairs, check_pairs, task,
                                                        device)
                    vlog.write(row)
                    score = row.get("val_psnr_ema", row["val_psnr"])
                    if score > best:
                        best = score
                        atomic_torch_save(out / "model_best.pt", weights())
                best = dist.broadcast(best)
            if (step % rc.checkpoint_every == 0 or step == rc.steps) and main:
                atomic_torch_save(out / "model_last.pt", weights())
                atomic_torch_save(state_path, {
                    "setup": cfg_dict, "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "stream": stream.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(), "step": step, "best": best})
            if stop_after is not None and step >= stop_after:
                return {"best_val_psnr_db": best, "steps": step, "stopped": True}
    finally:
        stream.close()
        vlog.close()
        bar.close()
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"best_val_psnr_db": best, "steps": step, "seconds": seconds,
                              "ema_decay": rc.ema}
    if data_root is not None and rc.eval_sets and main:
        best_state = torch.load(out / "model_best.pt", map_location=device, weights_only=True)
        for key, name in (("params", "eval"), ("params_ema", "eval_ema")):
            if key not in best_state:
                continue
            model.load_state_dict(best_state[key])
            per_image = evaluate_sets(data_root, rc.eval_sets, task,
                                      model_restore_fn(model, device), progress=False)
            suffix = "" if key == "params" else "_ema"
            atomic_write_text(out / f"eval{suffix}.csv",
                              per_image.to_csv(index=False, float_format="%.4f"))
            summary = per_set_means(per_image)
            atomic_write_text(out / f"eval_summary{suffix}.csv",
                              summary.to_csv(index=False, float_format="%.4f"))
            result[name] = summary.to_dict(orient="records")
    if main:
        atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    dist.barrier()
    return result


@torch.no_grad()
def _validate(model, val_pairs, train_pairs, task, device) -> float:
    from nas.restoration.evaluate import evaluate_pairs, model_restore_fn, psnr_on_centre_crops

    if val_pairs is not None:
        df = evaluate_pairs(val_pairs, task, model_restore_fn(model, device), progress=False)
        model.train()
        return float(df["psnr"].mean())
    out = psnr_on_centre_crops(model, (train_pairs or [])[:4], task, 96, lambda t: t.to(device))
    model.train()
    return out


def inherit_from_supernet(model, spec: ArchSpec, path: Path) -> None:
    """Initialise from a supernet checkpoint (the supernet must match the spec's space)."""
    from nas.config import from_dict
    from nas.engine.network import inherit_weights
    from nas.engine.supernet import Supernet
    from search_spaces.space import SpaceConfig

    if not path.is_file():
        raise UsageError(f"--inherit: {path}: no such supernet checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        space_cfg = from_dict(SpaceConfig, state["config"]["space"], "supernet.space")
        sn = Supernet(space_cfg, spec.task_obj())
        weights = state["model"]
        if any(k.startswith("net.") for k in weights):  # a 0.1 checkpoint: the whole Supernet
            sn.load_state_dict(weights)
        else:
            sn.net.load_state_dict(weights)
        inherit_weights(sn.net, model)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable or mismatched checkpoint
        first = (str(e).splitlines() or [""])[0][:120]
        raise UsageError(f"--inherit: {path}: not a supernet checkpoint of this architecture's "
                         f"space ({e.__class__.__name__}: {first})") from None
