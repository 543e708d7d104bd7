"""Where one ACLA module's time goes: the module's forward+backward against its pieces, each on the
module's own intermediate tensors, timed in interleaved rounds.

One ACLA module at the quickstart's search-step size (batch ``--batch``, ``--size`` x ``--size``
map, ``--channels`` channels, 1 reference x ``--keys`` keys, dilation 4, projection moved off
zero, CPU). Rows (``results/bench/acla_breakdown.csv``: ``piece, sampler, device, ms,
share_of_module``):

* ``module_train`` / ``module_eval``: ``ACLA.forward`` + ``backward`` in training mode (Gumbel keep
  mask, straight-through gradient: the weight step) and in eval mode with input gradients (the
  alpha step); ``share_of_module`` is relative to ``module_train`` on the first path of
  ``--samplers`` (default ``auto`` - the fused kernel on the CPU - and ``sparse``). On the fused
  path the module runs as one :func:`search_spaces.operators.acla_fused.block` (the 1x1
  convolutions as batched matmuls around the core);
* ``module_train_composite`` (fused path): the same step with the block switched off - the
  composite of ``F.conv2d`` (query conv), :func:`search_spaces.operators.acla_fused.attend` and
  ``F.linear`` (projections) on channels-last views, what the fused path ran before the block;
* ``attend_core`` (fused path): the fused kernel's whole core, its two C++ operators as the block
  calls them (keep decision, softmax over the kept slots with its straight-through gradient,
  sampling and weighted sum; backward w.r.t. the query conv's output and the projected values);
* ``gather`` (sparse path): the value projection and the sampling and weighted sum
  (``ACLA._aggregate``, with the probe of dropped pairs), forward + backward w.r.t. the
  reference, offsets and weights;
* ``query_conv``: the 1x1 convolution of the queries (offsets, logits, keep logits), as the
  composite and the sparse path run it (``F.conv2d``);
* ``masked_softmax_st`` (sparse path): the softmax over the kept slots with its straight-through
  gradient (inside ``attend_core`` on the fused path);
* ``keep_mask`` (sparse path): the logistic noise and the hard keep decision (no gradient);
* ``noise``: the logistic noise alone (the fused path's only piece of the keep decision outside
  the kernel);
* ``projections``: the value projection of the reference and the output projection (matmuls on
  channels-last views, as the composite and the sparse path run them) with the residual addition
  (the value projection is also inside ``gather``).

The pieces do not add up to the module exactly (dtype casts, permutes, autograd bookkeeping and
cache effects differ when a piece runs alone); the table says which pieces matter.

Usage::

    python experiments/bench/acla_breakdown.py [--threads 1] [--batch 8] [--size 32]
        [--channels 16] [--keys 9] [--repeats 30] [--samplers auto sparse] [--out results/bench]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nas.timing import interleaved_ms, write_csv  # noqa: E402
from search_spaces.operators import ACLA  # noqa: E402
from search_spaces.operators.acla import ST_LOG_CLAMP, _MaskedSoftmaxST  # noqa: E402

COLUMNS = ["piece", "sampler", "device", "ms", "share_of_module"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--keys", type=int, default=9)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samplers", nargs="+", default=["auto", "sparse"],
                   choices=["auto", "fused", "sparse"], help="ACLA paths to break down")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    return p.parse_args(argv)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    c, k = args.channels, args.keys
    m = ACLA(c, 1, keys=[k], dilation=4).train()
    with torch.no_grad():
        m.proj.weight.normal_(0.0, 0.02)
        m.conv_offset.weight.normal_(0.0, 0.05)  # offsets move off the integer grid
    x = torch.randn(args.batch, c, args.size, args.size, requires_grad=True)
    r = torch.randn_like(x).requires_grad_(True)
    ranges = m._slot_ranges(m.keys)
    with torch.no_grad():  # the module's own intermediate tensors, one training forward
        q = m._query_conv(x, ranges)
        dx, dy, logits, mask_logits = m._query(x, ranges)
        keep, score = m._keep_mask(mask_logits)
        weights = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=1)
        values = m._values([r])[0].unsqueeze(0)
        noise = m._noise(mask_logits)
    dx_l, dy_l, w_l, logits_l, score_l = (leaf(t) for t in (dx, dy, weights, logits, score))
    g_out = torch.randn(args.batch, args.size, args.size, c)

    def module(train: bool, path: str):
        def step() -> None:
            m.sampler = path
            m.train(train)
            m.zero_grad(set_to_none=True)
            x.grad = r.grad = None
            m(x, [r]).sum().backward()
        return step

    def gather(path: str):
        def step() -> None:
            m.sampler = path
            dx_l.grad = dy_l.grad = w_l.grad = None
            m._aggregate([r], [k], dx_l, dy_l, w_l, keep, True).sum().backward()
        return step

    def attend_core() -> None:
        _, weights_c, keep_c, _ = torch.ops.acla_nas_cpu.attend_forward(q, values, noise, None, True, [k])
        torch.ops.acla_nas_cpu.attend_backward(g_out, None, q, values, noise, weights_c, keep_c, True,
                                               [k], True, m.tau, ST_LOG_CLAMP, True)

    def composite() -> None:
        block_ok = ACLA._block_ok
        try:
            ACLA._block_ok = lambda self, x, refs: False
            module(True, "fused")()
        finally:
            ACLA._block_ok = block_ok

    def query_conv() -> None:
        m.zero_grad(set_to_none=True)
        m._query_conv(x, ranges).sum().backward()

    def masked_softmax_st() -> None:
        logits_l.grad = score_l.grad = None
        _MaskedSoftmaxST.apply(logits_l, keep, score_l, m.tau).pow(2).sum().backward()

    def keep_mask() -> None:
        m.train()
        m._keep_mask(mask_logits)

    def noise_piece() -> None:
        m._noise(mask_logits)

    agg = leaf(torch.randn(args.batch, args.size, args.size, c))

    def projections() -> None:
        m.zero_grad(set_to_none=True)
        vals = F.linear(r.permute(0, 2, 3, 1), m.conv_refer.weight.flatten(1), m.conv_refer.bias)
        y = F.linear(agg, m.proj.weight.flatten(1), m.proj.bias)
        (x + y.permute(0, 3, 1, 2)).sum().add(vals.sum()).backward()

    paths = list(dict.fromkeys(ACLA.resolve_sampler(smp, x.device) for smp in args.samplers))
    steps = {}
    for path in paths:  # the pieces that depend on the path, once per path
        steps[("module_train", path)] = module(True, path)
        steps[("module_eval", path)] = module(False, path)
        if path == "fused":
            steps[("module_train_composite", path)] = composite
            steps[("attend_core", path)] = attend_core
        else:
            steps[("gather", path)] = gather(path)
            steps[("masked_softmax_st", path)] = masked_softmax_st
            steps[("keep_mask", path)] = keep_mask
    steps.update({("query_conv", ""): query_conv, ("noise", ""): noise_piece,
                  ("projections", ""): projections})
    times = interleaved_ms(steps, torch.device("cpu"), args.warmup, args.repeats)
    dev = f"cpu {torch.get_num_threads()} thread(s)"
    base = times[("module_train", paths[0])]
    rows = [{"piece": piece, "sampler": path, "device": dev, "ms": round(ms, 3),
             "share_of_module": round(ms / base, 4)} for (piece, path), ms in times.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    out = write_csv(args.out / "acla_breakdown.csv", COLUMNS, rows)
    print(f"wrote {out} (batch {args.batch}, {args.size}x{args.size}, {c} channels, {k} keys, "
          f"{dev}; share of module_train on the {paths[0]} path)")
    for row in rows:
        print(f"  {row['piece']:18s} {row['sampler']:7s} {row['ms']:8.3f} ms  "
              f"{row['share_of_module']:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
