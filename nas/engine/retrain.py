"""Train a fixed (exported) network from scratch, then evaluate it on benchmark sets.

BasicSR-like iteration schedule: Adam, multi-step LR decay (``milestones`` as fractions of
``steps`` or absolute iterations), L1 loss, validation every ``val_every`` steps on a benchmark
set (PSNR, the task's convention), checkpoint every ``checkpoint_every`` steps. Files in the run
directory::

    retrain.pt       full training state (model, optimiser, scheduler, RNG, sampler, step, best)
    model_last.pt    {"params": state_dict} of the last step (BasicSR format)
    model_best.pt    {"params": state_dict} with the best validation PSNR
    val.jsonl        step, loss, validation PSNR
    eval.csv         per-image PSNR/SSIM on ``eval_sets`` after training; eval_summary.csv
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nas.config import Config, dump_config
from nas.config_checks import check_retrain
from nas.engine.archspec import ArchSpec, build_model
from nas.engine.objective import batch_psnr
from nas.errors import DivergedError, UsageError
from nas.io import atomic_torch_save, atomic_write_text, load_checkpoint, truncate_jsonl
from nas.restoration.data import PatchSampler, make_pairs
from nas.runtime import rng_state, set_rng_state

log = logging.getLogger("acla_nas.retrain")


def _milestones(values: list, steps: int) -> list[int]:
    out = []
    for v in values or [0.5, 0.75]:
        out.append(int(round(v * steps)) if isinstance(v, float) and v < 1 else int(v))
    return sorted(set(m for m in out if 0 < m < steps))


def retrain(spec: ArchSpec, cfg: Config, out_dir: str | Path, *, data_root: Path | None = None,
            device: torch.device | str = "cpu", progress: bool = True,
            inherit: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``spec``'s network on ``cfg.data`` images, validate and evaluate.

    Args:
        spec: the architecture.
        cfg: run config (``data``, ``retrain`` blocks are used; ``task`` must match the spec's).
        out_dir: run directory; an existing ``retrain.pt`` written with the same config resumes.
        data_root: benchmark data folder for validation/evaluation (``None``: validate on
            centre crops of held-out built-in photos and skip the benchmark evaluation).
        device: torch device.
        progress: tqdm bar.
        inherit: optional supernet checkpoint (``supernet.pt``) to initialise from.
        stop_after: stop once this many steps are done (simulates a killed run in tests); a
            later call continues from the last checkpoint.

    Returns:
        ``{"best_psnr_db", "steps", "seconds", "eval": [per-set rows]}``.

    Raises:
        UsageError: task mismatch, bad config, unreadable checkpoint, missing data.
    """
    from nas.restoration.evaluate import evaluate_sets, model_restore_fn, per_set_means

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    task = spec.task_obj()
    if cfg.task.to_dict() != task.to_dict():
        log.info("retrain: using the ArchSpec's task %s", task.to_dict())
    rc = cfg.retrain
    check_retrain(rc)
    torch.manual_seed(cfg.seed)
    model = build_model(spec).to(device)
    if inherit:
        inherit_from_supernet(model, spec, Path(inherit))
    images = cfg.data.load()
    pairs = make_pairs(images, task, cfg.seed)
    sampler = PatchSampler(pairs, task, cfg.data.patch_size, seed=cfg.seed)
    # validation: a benchmark set if available, else centre crops of the training photos
    val_pairs = None
    if data_root is not None:
        from nas.restoration.images import load_set_with_gray

        imgs, gray = load_set_with_gray(data_root, rc.val_set)
        val_pairs = make_pairs(imgs, task, cfg.seed, gray=gray)
    opt = torch.optim.Adam(model.parameters(), lr=rc.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(rc.milestones, rc.steps),
                                                 gamma=rc.gamma)
    use_amp = rc.amp and device.type == "cuda"
    step, best = 0, -float("inf")
    state_path = out / "retrain.pt"
    cfg_dict = {"config": cfg.to_dict(), "arch": spec.to_dict()}
    st = load_checkpoint(state_path, device)
    if st is not None:
        if st.get("setup") != cfg_dict:
            raise UsageError(f"{state_path}: written for another config/arch; use another --out")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        sampler.load_state_dict(st["sampler"])
        set_rng_state(st["rng"])
        step, best = st["step"], st["best"]
        truncate_jsonl(out / "val.jsonl", step)
    else:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        spec.save(out / "arch.json")
    t0 = time.perf_counter()
    bar = tqdm(total=rc.steps, initial=step, desc="retrain", unit="step", disable=not progress,
               dynamic_ncols=True)
    vlog = (out / "val.jsonl").open("a")
    try:
        while step < rc.steps:
            model.train()
            lq, hr = (t.to(device) for t in sampler.sample(cfg.data.batch_size))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                sr = model(lq)
            loss = F.l1_loss(sr.float(), hr)
            if not torch.isfinite(loss):
                raise DivergedError(f"retrain step {step}: L1 is {float(loss.detach())}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{float(loss.detach()):.4f}", psnr=f"{batch_psnr(sr, hr):.2f}")
            if step % rc.val_every == 0 or step == rc.steps:
                psnr = _validate(model, val_pairs, pairs, task, device, cfg)
                vlog.write(json.dumps({"step": step, "l1": float(loss.detach()),
                                       "val_psnr": psnr}) + "\n")
                vlog.flush()
                if psnr > best:
                    best = psnr
                    atomic_torch_save(out / "model_best.pt", {"params": model.state_dict()})
            if step % rc.checkpoint_every == 0 or step == rc.steps:
                atomic_torch_save(out / "model_last.pt", {"params": model.state_dict()})
                atomic_torch_save(state_path, {
                    "setup": cfg_dict, "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "sampler": sampler.state_dict(),
                    "rng": rng_state(), "step": step, "best": best})
            if stop_after is not None and step >= stop_after:
                return {"best_val_psnr_db": best, "steps": step, "stopped": True}
    finally:
        vlog.close()
        bar.close()
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"best_val_psnr_db": best, "steps": step, "seconds": seconds}
    if data_root is not None and rc.eval_sets:
        best_state = torch.load(out / "model_best.pt", map_location=device, weights_only=True)
        model.load_state_dict(best_state["params"])
        per_image = evaluate_sets(data_root, rc.eval_sets, task, model_restore_fn(model, device),
                                  progress=False)
        atomic_write_text(out / "eval.csv", per_image.to_csv(index=False, float_format="%.4f"))
        summary = per_set_means(per_image)
        atomic_write_text(out / "eval_summary.csv", summary.to_csv(index=False,
                                                                   float_format="%.4f"))
        result["eval"] = summary.to_dict(orient="records")
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def _validate(model, val_pairs, train_pairs, task, device, cfg) -> float:
    from nas.restoration.evaluate import evaluate_pairs, model_restore_fn, psnr_on_centre_crops

    if val_pairs is not None:
        df = evaluate_pairs(val_pairs, task, model_restore_fn(model, device), progress=False)
        model.train()
        return float(df["psnr"].mean())
    return psnr_on_centre_crops(model, train_pairs[:4], task, 96, lambda t: t.to(device))


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
