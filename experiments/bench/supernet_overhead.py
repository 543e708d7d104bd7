"""Step time and peak memory of the supernet versus the fixed network of the sampled architecture.

For ``--archs`` architectures drawn from the supernet's own Gumbel gates (seeded), one training
step (forward, L1 loss, backward) is timed on

* the supernet, running that architecture through its decisions (straight-through gate weights,
  ACLA slicing its first k key slots, gradients to the weights and to alpha), and
* the fixed network of the same architecture (``build_fixed`` + inherited weights),

on the same batch, in one run, and the ratios are written to
``results/bench/supernet_overhead.csv`` (one row per architecture plus a geometric-mean row).
Targets (issue 4): time ratio <= 1.3, memory ratio <= 1.2. Method of time and memory:
:mod:`nas.timing`.

Usage::

    python experiments/bench/supernet_overhead.py [--config experiments/search/sr_x2_small.yaml]
        [--archs 8] [--batch 8] [--patch 48] [--device auto|cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.config import load_config  # noqa: E402
from nas.engine.network import Decision  # noqa: E402
from nas.engine.supernet import Supernet  # noqa: E402
from nas.timing import interleaved_ms, peak_memory_mb, write_csv  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "experiments/search/sr_x2_small.yaml"))
    p.add_argument("--archs", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=48, help="HR patch side")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"cpu {torch.get_num_threads()} thread(s)"
    cfg = load_config(args.config)
    task = cfg.task
    torch.manual_seed(args.seed)
    sn = Supernet(cfg.space, task).to(dev).train()
    with torch.no_grad():  # move the zero-initialised projections off zero: all branches live
        for name, prm in sn.net.named_parameters():
            if name.endswith("proj.weight"):
                prm.normal_(0.0, 0.02)
    s = task.scale
    lq = torch.rand(args.batch, 3, args.patch // s, args.patch // s, device=dev)
    hr = torch.rand(args.batch, 3, args.patch, args.patch, device=dev)
    rows = []
    for i in range(args.archs):
        arch, dec = sn.sample(tau=1.0)
        fixed = sn.fixed_network(arch).train()

        def sn_clear():
            for prm in sn.parameters():
                prm.grad = None

        def sn_step():
            sn_clear()
            _, d = sn.sample(tau=1.0)  # a fresh straight-through graph each step
            d = {k: Decision(dec[k].op, dec[k].active_keys, v.weight) for k, v in d.items()}
            F.l1_loss(sn(lq, d), hr).backward()

        def fx_clear():
            for prm in fixed.parameters():
                prm.grad = None

        def fx_step():
            fx_clear()
            F.l1_loss(fixed(lq), hr).backward()

        times = interleaved_ms({"supernet": sn_step, "fixed": fx_step}, dev, 2, args.repeats)
        t_sn, t_fx = times["supernet"], times["fixed"]
        m_sn = peak_memory_mb(sn_step, sn_clear, dev)
        m_fx = peak_memory_mb(fx_step, fx_clear, dev)
        n_att = sum(1 for k, v in arch.items() if k.endswith("/op") and v != "skip")
        rows.append({"arch": i, "attention_points": n_att, "device": dev_name,
                     "supernet_ms": round(t_sn, 2), "fixed_ms": round(t_fx, 2),
                     "time_ratio": round(t_sn / t_fx, 4), "supernet_mb": round(m_sn, 2),
                     "fixed_mb": round(m_fx, 2), "mem_ratio": round(m_sn / m_fx, 4),
                     "gflops_fixed": round(sn.cost.exact(arch) / 1e9, 3)})
        print(f"arch {i}: {n_att} attention points, time x{t_sn / t_fx:.3f}, "
              f"memory x{m_sn / m_fx:.3f}")
    gm = {k: math.exp(sum(math.log(r[k]) for r in rows) / len(rows))
          for k in ("time_ratio", "mem_ratio")}
    rows.append({"arch": "geomean", "attention_points": "", "device": dev_name,
                 "supernet_ms": "", "fixed_ms": "", "time_ratio": round(gm["time_ratio"], 4),
                 "supernet_mb": "", "fixed_mb": "", "mem_ratio": round(gm["mem_ratio"], 4),
                 "gflops_fixed": ""})
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if dev.type == "cpu" else "_cuda"
    path = args.out / f"supernet_overhead{suffix}.csv"
    write_csv(path, list(rows[0]), rows)
    print(f"geometric mean: time x{gm['time_ratio']:.3f} (target <= 1.3), memory "
          f"x{gm['mem_ratio']:.3f} (target <= 1.2) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
