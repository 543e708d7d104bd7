"""Tests of ACLA's whole forward on the fused kernel (search_spaces.operators.acla_fused.block: the
query conv, the value projection, the core, the output projection and the residual in one autograd
function) against the module's composite of F.conv2d, the attend op and F.linear (the same module
with the block switched off) and against the sparse path, in float64: the output and the gradient
of x, of every reference and of every parameter; frozen weights; the FLOP counter."""

from __future__ import annotations

import pytest
import torch

from nas.engine.flops import measure_flops
from search_spaces.operators import ACLA
from search_spaces.operators.acla_fused import block

pytestmark = pytest.mark.usefixtures("fused_kernel")

B, C, H, W = 2, 5, 6, 7
KEYS = (3, 2)


def make(adaptive=True, seed=0):
    """An ACLA with random weights everywhere (offsets large enough to leave the map)."""
    torch.manual_seed(seed)
    m = ACLA(C, len(KEYS), keys=list(KEYS), adaptive=adaptive).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (2.0 if "offset" in name else 0.5))
    return m


def inputs(seed=3, ref_grad=(True, True)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    refs = [torch.randn(B, C, H, W, generator=g, dtype=torch.float64).requires_grad_(rg) for rg in ref_grad]
    return x, refs


def run(m, path, x, refs, seed=7, **kw):
    """Output and gradients (x, refs, parameters; None where not asked) of one forward + backward
    on ``path``: ``block`` (the default), ``composite`` (the block switched off) or ``sparse``."""
    m.sampler = "sparse" if path == "sparse" else "fused"
    for t in [x, *refs, *m.parameters()]:
        t.grad = None
    ok = ACLA._block_ok
    try:
        if path == "composite":
            ACLA._block_ok = lambda self, x, refs: False
        torch.manual_seed(seed)  # the training keep decision's noise: one draw, same on every path
        y = m(x, refs, **kw)
    finally:
        ACLA._block_ok = ok
    g = torch.Generator().manual_seed(11)
    y.backward(torch.randn(y.shape, generator=g, dtype=y.dtype))
    return [y.detach()] + [t.grad for t in [x, *refs, *m.parameters()]]


def assert_same(got, expected, atol=1e-10):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert (a is None) == (b is None), i
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=f"tensor {i}")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("active", [None, (3, 1), (0, 2), (2, 0)])
def test_block_equals_the_composite_and_the_sparse_path(training, adaptive, active):
    m = make(adaptive).train(training)
    x, refs = inputs()
    got = run(m, "block", x, refs, active_keys=active)
    assert got[0].is_contiguous()
    assert_same(got, run(m, "composite", x, refs, active_keys=active))
    assert_same(got, run(m, "sparse", x, refs, active_keys=active), atol=1e-9)


def test_block_with_a_fixed_key_mask():
    m = make().train()
    x, refs = inputs()
    g = torch.Generator().manual_seed(5)
    key_mask = torch.rand(B, sum(KEYS), H, W, generator=g) > 0.6
    key_mask[:, 0] |= ~key_mask.any(dim=1)
    got = run(m, "block", x, refs, key_mask=key_mask)
    assert_same(got, run(m, "composite", x, refs, key_mask=key_mask))
    assert_same(got, run(m, "sparse", x, refs, key_mask=key_mask), atol=1e-9)


@pytest.mark.parametrize("ref_grad", [(True, False), (False, False)])
def test_frozen_weights_and_references_without_gradient(ref_grad):
    """The alpha step of a search: weights frozen (no weight gradient computed), the input still
    differentiated (keep logits through the straight-through estimator included); references
    that do not ask for a gradient get none."""
    m = make().eval()
    m.requires_grad_(False)
    x, refs = inputs(ref_grad=ref_grad)
    got = run(m, "block", x, refs)
    assert all(p is None for p in got[3:])
    assert all((g is not None) == rg for g, rg in zip(got[2:4], ref_grad))
    assert_same(got, run(m, "composite", x, refs))


def test_only_the_value_projection_needs_the_values_gradient():
    """References without gradient but a trainable value projection: its gradient is still there."""
    m = make().train()
    x, refs = inputs(ref_grad=(False, False))
    got = run(m, "block", x, refs)
    names = [n for n, _ in m.named_parameters()]
    assert got[3 + names.index("conv_refer.weight")].abs().sum() > 0
    assert_same(got, run(m, "composite", x, refs))


def test_block_function_direct_call_and_flops():
    """block() with the module's own weights equals the module, and FlopCounterMode counts it as
    the module's analytic FLOPs (the matmuls as the 1x1 convolutions they replace)."""
    m = make().eval()
    x, refs = inputs()
    with torch.no_grad():
        qw, qb = m._query_weights(m._slot_ranges(KEYS))
        y = block(x, refs, qw.flatten(1), qb, m.conv_refer.weight.flatten(1), m.conv_refer.bias,
                  m.proj.weight.flatten(1), m.proj.bias, KEYS, adaptive=True, tau=m.tau)
        torch.testing.assert_close(y, m(x, refs), rtol=0, atol=0)
    m.sampler = "fused"
    cfg = {"num_refs": len(KEYS), "keys": list(KEYS), "adaptive": True}
    assert measure_flops(m, x.detach(), [r.detach() for r in refs]) == B * ACLA.flops(C, H, W, cfg)


def test_not_float32_or_float64_uses_the_composite():
    m = make().to(torch.bfloat16)
    m.sampler = "fused"
    x = torch.randn(B, C, H, W, dtype=torch.bfloat16)
    assert not m._block_ok(x, [x, x])
    assert m(x, [x, x]).dtype == torch.bfloat16
