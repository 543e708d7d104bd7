"""Scale-out benchmark: supernet weight steps per second on 1..N processes, and the data share.

Table 1 - ``results/bench/scaling.csv``: the supernet's weight step (``SupernetTraining.train_step``:
one alpha-independent path, L1, backward, averaged gradients, Adam) on the config's space, timed
for ``--procs`` processes started by ``torchrun`` (gloo on CPU, NCCL on CUDA, one GPU per process)
with the global batch fixed, so each of N processes computes 1/N of it. Columns: device (the CPU
model or GPU name), procs, threads per process, data workers per process, global batch, steps
timed, samples/s (global batch x steps / seconds), speedup over one process with the same threads
per process, and the fraction of the step spent waiting for the patch stream (``data_fraction``,
rank 0). Every setting runs in one invocation so the ratios share the machine's load.

Table 2 - ``results/bench/retrain_step.csv`` (``--retrain-step``): one retraining step of
EDSR-baseline x2 (16 blocks, 64 channels) at HR patch 96, batch 16 (the EDSR recipe), without and
with attention (ACLA at b07 and b15 reading 9 keys of the layer before), seconds per step, the
hours 300k iterations take at that speed, and the step's FLOPs (``FlopCounterMode``, forward
and backward; ACLA's bilinear sampling is not among the operations it counts): the basis of the
GPU-hour estimates in ``experiments/search/sr_x2_div2k_edsr_baseline.yaml`` and
``experiments/retrain/edsr_baseline_x2_div2k.yaml``.

    python experiments/bench/scaling.py                          # CPU: 1 and 2 processes
    python experiments/bench/scaling.py --device cuda --procs 1 2 4 8 --threads 4
    python experiments/bench/scaling.py --retrain-step --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def device_name(device: str, threads: int) -> str:
    """The CPU model (``/proc/cpuinfo``) or the GPU name, with the thread count on CPU."""
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {threads} thread(s)/process"


def worker(a: argparse.Namespace) -> None:
    """One rank: time ``a.steps`` weight steps after ``a.warmup``; rank 0 writes JSON."""
    import torch

    from nas.config import load_config
    from nas.engine import distributed as dist
    from nas.engine.supernet_search import SupernetTraining

    torch.set_num_threads(a.threads)
    device = dist.init(torch.device(a.device))
    cfg = load_config(a.config, list(a.set) + [f"data.workers={a.data_workers}",
                                               f"data.batch_size={a.batch}",
                                               "search.largest_path_steps=0"])
    with tempfile.TemporaryDirectory() as tmp:
        run = SupernetTraining(cfg, tmp, device)
        waited = [0.0]
        nxt = run.sampler.next

        def timed_next():
            t = time.perf_counter()
            out = nxt()
            waited[0] += time.perf_counter() - t
            return out

        run.sampler.next = timed_next
        for _ in range(a.warmup):
            run.train_step()
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        waited[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(a.steps):
            run.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        sec = time.perf_counter() - t0
        run.sampler.close()
    if dist.is_main():
        Path(a.json).write_text(json.dumps({"seconds": sec, "data_seconds": waited[0]}))


def retrain_step_rows(a: argparse.Namespace) -> list[dict]:
    """Seconds per retraining step of EDSR-baseline x2, patch 96, batch 16, without/with ACLA."""
    import torch
    import torch.nn.functional as F

    from nas.engine.archspec import ArchSpec, build_model

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    base = {"format_version": 1, "task": {"name": "sr", "scale": 2},
            "backbone": {"type": "edsr", "num_feat": 64, "num_block": 16, "res_scale": 1.0},
            "space": {"ops": ["skip", "acla"], "max_refs": 1, "keys": [0, 9]}}
    plain = {f"b{i:02d}/op": "skip" for i in range(16)}
    acla = dict(plain, **{"b07/op": "acla", "b07/keys@b06": 9, "b15/op": "acla",
                          "b15/keys@b14": 9})
    rows = []
    for name, choices in (("edsr_baseline_x2", plain), ("edsr_baseline_x2+acla_b07_b15", acla)):
        model = build_model(ArchSpec.from_dict(dict(base, choices=choices))).to(device)
        cuda = device.type == "cuda"
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        lq = torch.rand(16, 3, 48, 48, device=device)
        hr = torch.rand(16, 3, 96, 96, device=device)
        if cuda:
            lq = lq.contiguous(memory_format=torch.channels_last)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                out = model(lq)
            loss = F.l1_loss(out.float(), hr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:  # forward + backward of one step
            step()
        for _ in range(a.warmup - 1):
            step()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.retrain_steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        s = (time.perf_counter() - t0) / a.retrain_steps
        rows.append({"model": name, "device": device_name(a.device, a.threads),
                     "precision": "bf16 autocast, channels_last" if cuda else "fp32",
                     "patch_size": 96, "batch_size": 16, "steps_timed": a.retrain_steps,
                     "s_per_step": round(s, 4), "hours_per_300k_steps": round(s * 3e5 / 3600, 1),
                     "tflop_per_step": round(counter.get_total_flops() / 1e12, 4),
                     "tflop_per_s": round(counter.get_total_flops() / 1e12 / s, 4)})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "experiments" / "search" /
                   "sr_x2_small.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--data-workers", type=int, nargs="+", default=[0],
                   help="DataLoader workers per process (each setting is timed)")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--retrain-step", action="store_true",
                   help="also time EDSR-baseline x2 retraining steps (results/bench/retrain_step.csv)")
    p.add_argument("--retrain-steps", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.data_workers = a.data_workers[0]
        worker(a)
        return 0
    import pandas as pd

    os.environ.setdefault("ACLA_NAS_DATA", str(ROOT.parent / "shared" / "data"))
    rows = []
    for workers in a.data_workers:
        base = None
        for n in a.procs:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={n}", __file__, "--worker", "--json", str(out),
                       "--config", str(a.config), "--device", a.device, "--threads",
                       str(a.threads), "--data-workers", str(workers), "--batch", str(a.batch),
                       "--steps", str(a.steps), "--warmup", str(a.warmup)]
                for s in a.set:
                    cmd += ["--set", s]
                env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
                subprocess.run(cmd, check=True, env=env, cwd=ROOT)
                r = json.loads(out.read_text())
            sps = a.batch * a.steps / r["seconds"]
            base = base or sps
            rows.append({"device": device_name(a.device, a.threads), "procs": n,
                         "threads_per_proc": a.threads, "data_workers": workers,
                         "global_batch": a.batch, "steps": a.steps,
                         "seconds": round(r["seconds"], 3), "samples_per_s": round(sps, 2),
                         "speedup_vs_1_proc": round(sps / base, 3),
                         "data_fraction": round(r["data_seconds"] / r["seconds"], 4),
                         "config": str(a.config.relative_to(ROOT)) if a.config.is_relative_to(ROOT)
                         else str(a.config)})
            print(rows[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if a.device == "cpu" else "_" + a.device.split(":")[0]
    pd.DataFrame(rows).to_csv(a.out / f"scaling{suffix}.csv", index=False)
    if a.retrain_step:
        pd.DataFrame(retrain_step_rows(a)).to_csv(a.out / f"retrain_step{suffix}.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
