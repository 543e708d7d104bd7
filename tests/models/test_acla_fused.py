"""Tests of ACLA's fused CPU kernel (search_spaces.operators.acla_fused): against the sparse path
(itself tested against the naive reference and grid_sample), gradcheck, the FLOP counter, its
build fallback and its argument checks. Module-level equality with the naive reference and the
other paths runs in test_acla_sampling.py (once per path)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import search_spaces.operators.acla as acla_mod
from nas.engine.flops import EXTRA_FLOP_FORMULAS, measure_flops
from search_spaces.operators import ACLA
from search_spaces.operators import acla_fused as fused
from search_spaces.operators.acla_fused import deform_gather, deform_gather_flop, fused_available
from search_spaces.operators.acla_sampling import corner_plan, plan_stats
from tests.models.acla_paths import sparse_gather

B, H, W, C = 2, 5, 6, 3
KEYS = [3, 2]
S = sum(KEYS)


pytestmark = pytest.mark.usefixtures("fused_kernel")


def case(dtype=torch.float64, scale=3.0, seed=0, grad=True):
    """Random value maps (channels last), offsets (many points partly or fully outside), weights
    and a keep mask. dx/dy are slices of a larger tensor (batch stride != S*H*W), as in ACLA."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, H, W, C, generator=g, dtype=dtype) for _ in KEYS]
    q = torch.randn(B, 3 * S, H, W, generator=g, dtype=dtype) * scale
    w = torch.rand(B, S, H, W, generator=g, dtype=dtype)
    keep = torch.rand(B, S, H, W, generator=g) > 0.3
    if grad:
        for t in (*maps, q, w):
            t.requires_grad_(True)
    dx, dy = q[:, :S], q[:, S:2 * S]
    assert dx.stride(0) == 3 * S * H * W
    return maps, dx, dy, w, keep


@pytest.mark.parametrize("use_keep, probe", [(False, False), (True, False), (True, True)])
def test_equals_sparse_path_float64(use_keep, probe):
    maps, dx, dy, w, keep = case()
    keep = keep if use_keep else None
    if keep is not None:  # dropped pairs weigh 0, as in ACLA (the sparse path's probe also
        w = (w * keep).detach().requires_grad_(True)  # gives them a dx/dy gradient otherwise)
    ref = sparse_gather(maps, dx, dy, w, keep, KEYS, probe)
    out = deform_gather(torch.stack(maps), dx, dy, w, keep, KEYS, probe)
    assert out.shape == (B, H, W, C) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gout = torch.randn_like(out)
    inputs = [*maps, dx, dy, w]
    g_ref = torch.autograd.grad(ref, inputs, gout, retain_graph=True)
    g_out = torch.autograd.grad(out, inputs, gout)
    if probe:  # dropped pairs with a footprint on the map get G · sample
        assert g_out[-1][~keep].abs().sum() > 0
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_probe_gives_the_sample_dot_for_dropped_pairs():
    """probe=True: dL/dweights of a dropped pair is G · sample (what the pair would have added),
    computed from the output of the same kernel with only that pair kept."""
    maps, dx, dy, w, keep = case(grad=False)
    values = torch.stack(maps)
    w = w.requires_grad_(True)
    gout = torch.randn(B, H, W, C, dtype=torch.float64)
    (deform_gather(values, dx, dy, w, keep, KEYS, probe=True) * gout).sum().backward()
    b, s, i, j = [int(t[0]) for t in torch.nonzero(~keep)[:1].unbind(1)]
    only = torch.zeros_like(keep)
    only[b, s, i, j] = True
    sample = deform_gather(values, dx, dy, torch.ones_like(w), only, KEYS)[b, i, j]
    torch.testing.assert_close(w.grad[b, s, i, j], gout[b, i, j] @ sample)
    w.grad = None
    (deform_gather(values, dx, dy, w, keep, KEYS, probe=False) * gout).sum().backward()
    assert torch.all(w.grad[~keep] == 0)


def test_gradcheck():
    """Offsets away from integers (the bilinear kink) and a keep mask; w.r.t. every float input."""
    g = torch.Generator().manual_seed(4)
    maps = [torch.randn(1, 3, 4, 2, generator=g, dtype=torch.float64) for _ in KEYS]
    values = torch.stack(maps).requires_grad_(True)
    base = torch.randint(-2, 3, (1, S, 3, 4), generator=g).double()
    dx = (base + 0.2 + 0.6 * torch.rand(1, S, 3, 4, generator=g, dtype=torch.float64))
    dy = (base.flip(1) + 0.2 + 0.6 * torch.rand(1, S, 3, 4, generator=g, dtype=torch.float64))
    w = torch.rand(1, S, 3, 4, generator=g, dtype=torch.float64)
    keep = torch.rand(1, S, 3, 4, generator=g) > 0.3
    args = [t.requires_grad_(True) for t in (dx, dy, w)]
    assert torch.autograd.gradcheck(lambda v, x, y, a: deform_gather(v, x, y, a, keep, KEYS),
                                    (values, *args))


def test_non_finite_offsets_read_zero_with_zero_gradient():
    maps, dx, dy, w, _ = case(grad=False)
    dx = dx.clone()
    dx[0, 0, 0, 0], dx[0, 1, 0, 0], dx[1, 0, 2, 3] = float("nan"), float("inf"), -1e30
    values = torch.stack(maps).requires_grad_(True)
    dx.requires_grad_(True)
    w = torch.zeros_like(w)
    w[0, 0, 0, 0] = w[0, 1, 0, 0] = w[1, 0, 2, 3] = 1.0
    w.requires_grad_(True)
    out = deform_gather(values, dx, dy, w, None, KEYS)
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(values.grad == 0)
    for t in (dx.grad, w.grad):  # at the three non-finite pairs (others have w = 0, not G·sample = 0)
        assert t[0, 0, 0, 0] == 0 and t[0, 1, 0, 0] == 0 and t[1, 0, 2, 3] == 0


def test_low_precision_computes_in_float32():
    maps, dx, dy, w, keep = case(dtype=torch.float32, grad=False)
    values = torch.stack(maps).bfloat16().requires_grad_(True)
    out = deform_gather(values, dx.bfloat16(), dy.bfloat16(), w, keep, KEYS)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert values.grad.dtype == torch.bfloat16 and torch.isfinite(values.grad).all()


def test_float32_matches_float64():
    maps, dx, dy, w, keep = case(grad=False)
    ref = deform_gather(torch.stack(maps), dx, dy, w, keep, KEYS)
    out = deform_gather(torch.stack(maps).float(), dx.float(), dy.float(), w.float(), keep, KEYS)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ FLOPs, counters
def test_flops_registered_and_equal_to_the_sparse_op():
    assert EXTRA_FLOP_FORMULAS[torch.ops.acla_nas.deform_gather] is deform_gather_flop
    maps, dx, dy, w, keep = case(grad=False)
    with FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
        deform_gather(torch.stack(maps), dx, dy, w, keep, KEYS)
    assert counter.get_total_flops() == 2 * (4 + 1) * B * H * W * S * C
    # on the meta device (the fake kernel) too
    meta = [t.to("meta") for t in (torch.stack(maps), dx, dy, w, keep)]
    with FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
        out = deform_gather(*meta, KEYS)
    assert out.shape == (B, H, W, C) and counter.get_total_flops() == 2 * 5 * B * H * W * S * C


def test_module_flops_measured_on_the_fused_path():
    m = ACLA(8, 2, keys=KEYS).eval()
    m.sampler = "fused"
    x = torch.randn(1, 8, 7, 9)
    assert measure_flops(m, x, [torch.randn_like(x), torch.randn_like(x)]) == \
        ACLA.flops(8, 7, 9, {"keys": KEYS})


def test_masked_keys_are_not_sampled():
    maps, dx, dy, w, keep = case(grad=False)
    _, _, _, inside = corner_plan(dx.permute(0, 2, 3, 1), dy.permute(0, 2, 3, 1), KEYS)
    expected = int((inside & keep.permute(0, 2, 3, 1)).sum())
    assert 0 < expected < B * H * W * S
    plan_stats(reset=True)
    deform_gather(torch.stack(maps), dx, dy, w, keep, KEYS)
    assert plan_stats(reset=True) == {"forward": 4 * expected, "probe": 0}


# ------------------------------------------------------------------------------ errors, fallback
def test_argument_errors():
    maps, dx, dy, w, keep = case(grad=False)
    values = torch.stack(maps)
    with pytest.raises(ValueError, match="values must be"):
        deform_gather(values[0], dx, dy, w, keep, KEYS)
    with pytest.raises(ValueError, match="dx must have"):
        deform_gather(values, dx[:, :1], dy, w, keep, KEYS)
    with pytest.raises(ValueError, match="keep must be"):
        deform_gather(values, dx, dy, w, keep.float(), KEYS)
    with pytest.raises(ValueError, match="keys must be"):
        deform_gather(values, dx, dy, w, keep, [4, 2])
    with pytest.raises(ValueError, match="do not match"):
        deform_gather(values[:, :1], dx, dy, w, keep, KEYS)


def test_build_failure_falls_back_to_the_sparse_path(monkeypatch):
    """A kernel that cannot be built: one warning naming the reason, and ACLA (sampler auto) runs
    the sparse path with the same result."""
    m = ACLA(C, 2, keys=KEYS).double().eval()
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    refs = [torch.randn_like(x), torch.randn_like(x)]
    with torch.no_grad():
        m.proj.weight.normal_()
        expected = m(x, refs)
    monkeypatch.setattr(fused, "_STATE", {})
    monkeypatch.setattr(fused, "_build", lambda: "CalledProcessError: no compiler")
    with pytest.warns(RuntimeWarning, match="no compiler"):
        assert not fused_available()

    def refuse(*a, **k):
        raise AssertionError("the fused kernel must not be called")

    monkeypatch.setattr(acla_mod, "fused_attend", refuse)
    monkeypatch.setattr(acla_mod, "fused_block", refuse)
    with torch.no_grad():
        torch.testing.assert_close(m(x, refs), expected)
    m.sampler = "fused"
    with pytest.raises(AssertionError, match="must not be called"):
        m(x, refs)


def test_env_variable_skips_the_build(monkeypatch):
    monkeypatch.setattr(fused, "_STATE", {})
    monkeypatch.setenv(fused.ENV, "sparse")

    def no_build():
        raise AssertionError("must not build")

    monkeypatch.setattr(fused, "_build", no_build)
    assert not fused_available()


def test_raw_op_refuses_without_the_kernel(monkeypatch):
    maps, dx, dy, w, keep = case(grad=False)
    monkeypatch.setattr(fused, "_STATE", {"ok": False})
    with pytest.raises(RuntimeError, match="fused kernel"):
        deform_gather(torch.stack(maps), dx, dy, w, keep, KEYS)
