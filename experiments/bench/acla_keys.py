"""Does ACLA's time follow the keys it actually samples? Forward+backward time versus the active
key count and versus the fraction of keys the adaptive mask keeps.

One ACLA module (``--channels`` channels, 2 references, batch 1, ``--size`` x ``--size`` map,
projection moved off zero) is timed, in interleaved rounds, in two modes - ``train`` (forward +
backward in training mode, as in a search step; the ``fwd_bwd_ms`` column) and ``infer`` (a
forward without autograd in eval mode, as in a deployed network; ``fwd_bwd_ms`` is then the
forward time) - and two families of settings:

* ``keys``: ``k`` active key slots per reference for k in ``--keys`` (the supernet's key-count
  choice, ``active_keys``), every slot kept (keep/drop logits biased to +20);
* ``keep``: 9 slots per reference with the keep/drop logits biased to ``logit(f)``, so that in
  training each (query, slot) pair is kept with probability ``f`` (logistic noise, plus the
  always-kept best slot of each query), for f in ``--keep``.

Each setting runs on the fused C++ kernel (``sampler = fused``, the default on the CPU; skipped
when it cannot be built) and the sparse gather-and-reduce path (``sparse``), which both sample
only the kept pairs, and on the first ``F.grid_sample`` path (``grid_sample``, which samples
every active slot). The result goes to ``results/bench/acla_keys.csv`` with columns
``sampler, family, keys_per_ref, keep_target, keep_measured, device, fwd_bwd_ms,
analytic_gflops, sampled_gflops, time_ratio, sampled_flops_ratio``:

* ``analytic_gflops``: forward FLOPs (= 2 x MACs) of the setting by ``ACLA.flops`` (every active
  slot charged: the cost model's convention, unchanged by the kernel);
* ``sampled_gflops``: the same formula with the sampling and weighted-sum terms charged for the
  *sampled* slots only, ``keep_measured x S`` (the query projections and the softmax run for
  every active slot): the work the fused and sparse paths actually do in their forward;
* ``time_ratio`` / ``sampled_flops_ratio``: both relative to the same sampler's ``keys``
  setting with 9 keys (all kept). "Time follows the sampled keys" means the two ratios move
  together on the fused and sparse paths; on the grid_sample path the time stays flat in
  ``keep``.

The straight-through gradient of the keep/drop logits needs ``dL/dweight`` of the dropped pairs
too, so the training backward computes one dot product per dropped pair (no sampling, no
``dL/dvalues``): the backward does not shrink as fast as the forward.

Usage::

    python experiments/bench/acla_keys.py [--size 128] [--channels 64] [--keys 1 2 4 9]
        [--keep 1 0.75 0.5 0.25] [--repeats 9] [--threads 1] [--out results/bench]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.timing import interleaved_ms, write_csv  # noqa: E402
from search_spaces.operators import OPERATORS  # noqa: E402

COLUMNS = ["sampler", "mode", "family", "keys_per_ref", "keep_target", "keep_measured", "device",
           "fwd_bwd_ms", "analytic_gflops", "sampled_gflops", "time_ratio", "sampled_flops_ratio"]
NUM_REFS = 2
MAX_KEYS = 9
ALL_KEPT_BIAS = 20.0
#: FLOPs per sampled value and slot in ``ACLA.flops``: 8 (bilinear sampling) + 2 (weighted sum)
SAMPLE_SUM_FLOPS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--keys", type=int, nargs="+", default=[1, 2, 4, 9])
    p.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = p.parse_args(argv)
    if any(not 1 <= k <= MAX_KEYS for k in args.keys):
        p.error(f"--keys: each count must be in [1, {MAX_KEYS}]")
    if any(not 0.0 < f <= 1.0 for f in args.keep):
        p.error("--keep: each fraction must be in (0, 1]")
    return args


def sampled_gflops(analytic: float, channels: int, size: int, keys: int, keep: float) -> float:
    """Forward GFLOPs of ``analytic`` (``ACLA.flops``, FLOPs) with the sampling and weighted-sum
    terms (``(8 + 2)·N·C·S``) charged for the ``keep x S`` sampled slots only; the query
    projections, the softmax and the 1x1 convs run for every active slot whatever the mask."""
    n, s = size * size, NUM_REFS * keys
    return (analytic - (1.0 - keep) * SAMPLE_SUM_FLOPS * n * channels * s) / 1e9


def build(channels: int, size: int, keys: int, bias: float, sampler: str, mode: str, seed: int):
    """``(step, keep_fraction)``. ``mode="train"``: ``step`` runs forward + backward of a fixed
    output gradient in training mode (sampled keep mask, straight-through gradient);
    ``mode="infer"``: a forward without autograd in eval mode (deterministic mask). ``keep_fraction()``
    is the kept share of the active (query, slot) pairs in one forward of that mode."""
    torch.manual_seed(seed)
    module = OPERATORS.get("acla")(channels, NUM_REFS, keys=[MAX_KEYS] * NUM_REFS)
    module.train(mode == "train")
    module.sampler = sampler
    with torch.no_grad():
        module.proj.weight.normal_(0.0, 0.02)
        module.conv_mask.bias.fill_(bias)
    x = torch.randn(1, channels, size, size, requires_grad=True)
    refs = [torch.randn_like(x).requires_grad_(True) for _ in range(NUM_REFS)]
    grad = torch.randn_like(x)
    active = [keys] * NUM_REFS

    def step() -> None:
        if mode == "infer":
            with torch.no_grad():
                module(x, refs, active_keys=active)
            return
        for t in [x, *refs, *module.parameters()]:
            t.grad = None
        module(x, refs, active_keys=active).backward(grad)

    def keep_fraction() -> float:
        with torch.no_grad():
            return float(module.attend(x, refs, active).keep.float().mean())

    return step, keep_fraction


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev_name = f"cpu {torch.get_num_threads()} thread(s)"
    settings = [("keys", k, 1.0) for k in args.keys]
    settings += [("keep", MAX_KEYS, f) for f in args.keep if f < 1.0]
    rows, steps = [], {}
    acla_flops = OPERATORS.get("acla").flops
    from search_spaces.operators.acla_fused import fused_available

    samplers = (["fused"] if fused_available() else []) + ["sparse", "grid_sample"]
    for sampler in samplers:
        for mode in ("train", "infer"):
            for family, k, f in settings:
                bias = ALL_KEPT_BIAS if f >= 1.0 else math.log(f / (1.0 - f))
                step, keep_fraction = build(args.channels, args.size, k, bias, sampler, mode,
                                            args.seed)
                name = f"{sampler}/{mode}/{family}/{k}/{f}"
                steps[name] = step
                kept = keep_fraction()
                analytic = acla_flops(args.channels, args.size, args.size, {"keys": [k] * NUM_REFS})
                rows.append({"sampler": sampler, "mode": mode, "family": family,
                             "keys_per_ref": k, "keep_target": f, "keep_measured": round(kept, 4),
                             "device": dev_name, "analytic_gflops": round(analytic / 1e9, 4),
                             "sampled_gflops": round(sampled_gflops(analytic, args.channels,
                                                                    args.size, k, kept), 4),
                             "_name": name})
    times = interleaved_ms(steps, torch.device("cpu"), args.warmup, args.repeats)
    for r in rows:
        r["fwd_bwd_ms"] = round(times[r.pop("_name")], 3)
    for r in rows:
        ref = next(q for q in rows if q["sampler"] == r["sampler"] and q["mode"] == r["mode"]
                   and q["family"] == "keys" and q["keys_per_ref"] == max(args.keys))
        r["time_ratio"] = round(r["fwd_bwd_ms"] / ref["fwd_bwd_ms"], 4)
        r["sampled_flops_ratio"] = round(r["sampled_gflops"] / ref["sampled_gflops"], 4)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "acla_keys.csv"
    write_csv(path, COLUMNS, rows)
    print(f"wrote {path} ({dev_name}, {args.size}x{args.size}, {args.channels} channels)")
    for r in rows:
        print(f"  {r['sampler']:11s} {r['mode']:5s} {r['family']:4s} k={r['keys_per_ref']} "
              f"keep={r['keep_measured']:.2f} "
              f"{r['fwd_bwd_ms']:9.2f} ms  time x{r['time_ratio']:.3f}  "
              f"sampled FLOPs x{r['sampled_flops_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
