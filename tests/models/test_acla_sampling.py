"""Tests of ACLA's sampling paths - the sparse one (search_spaces.operators.acla_sampling) and the
fused CPU kernel (search_spaces.operators.acla_fused) - against the naive reference, the
grid_sample path, gradcheck, the FLOP counter and the entry counters. Every module-level test runs
once per path (the ``sampler`` fixture sets ``ACLA.sampler``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from nas.engine.flops import EXTRA_FLOP_FORMULAS, measure_flops
from search_spaces.operators import ACLA
from search_spaces.operators.acla_fused import fused_available
from search_spaces.operators.acla_sampling import (
    bilinear_gather,
    bilinear_gather_flop,
    bordered,
    corner_plan,
    plan_stats,
)
from tests.reference_ops import acla_ref

C, H, W, B = 6, 5, 4, 2


@pytest.fixture(autouse=True, params=["sparse", "fused"])
def sampler(request, monkeypatch):
    """The default sampling path of every ACLA built in a test (``ACLA.sampler``)."""
    if request.param == "fused" and not fused_available():
        pytest.skip("the fused CPU kernel could not be built here (no C++ compiler?)")
    monkeypatch.setattr(ACLA, "sampler", request.param)
    return request.param


def make(keys=(3, 2), adaptive=True, seed=0, scale=0.5, offset_scale=None, dtype=torch.float64):
    """An ACLA with random weights everywhere (offsets ``offset_scale`` x larger, if given)."""
    torch.manual_seed(seed)
    m = ACLA(C, len(keys), keys=list(keys), adaptive=adaptive).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
            if offset_scale is not None and name.startswith("conv_offset"):
                p.mul_(offset_scale)
    return m


def inputs(num_refs, b=B, h=H, w=W, dtype=torch.float64, seed=3, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, C, h, w, generator=g, dtype=dtype)
    refs = [torch.randn(b, C, h, w, generator=g, dtype=dtype) for _ in range(num_refs)]
    if grad:
        x.requires_grad_(True)
        for r in refs:
            r.requires_grad_(True)
    return x, refs


def random_mask(s, seed=5, p=0.5, b=B, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, s, h, w, generator=g) > p
    mask[:, 0] |= ~mask.any(dim=1)  # every query keeps at least one slot
    return mask


# ------------------------------------------------------------------------------ vs the reference
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("offset_scale", [None, 6.0])  # 6.0: many points partly/fully outside
def test_matches_reference_float64(adaptive, offset_scale):
    m = make(adaptive=adaptive, offset_scale=offset_scale).eval()
    x, refs = inputs(2)
    y_ref, w_ref = acla_ref(m.state_dict(), {"keys": [3, 2], "adaptive": adaptive}, x, refs)
    torch.testing.assert_close(m(x, refs), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.attend(x, refs).weights, w_ref, rtol=1e-5, atol=1e-5)
    if offset_scale is not None:  # the case really has points outside the map
        off = m._query(x, m._slot_ranges(m.keys))
        _, _, _, inside = corner_plan(off[0].permute(0, 2, 3, 1), off[1].permute(0, 2, 3, 1),
                                      m.keys)
        assert 0 < inside.sum() < inside.numel()


@pytest.mark.parametrize("active", [None, [3, 0], [1, 2], [0, 1]])
def test_matches_reference_with_key_mask_and_active_keys(active):
    m = make(keys=(3, 2), offset_scale=3.0).eval()
    x, refs = inputs(2)
    s = 5 if active is None else sum(active)
    mask = random_mask(s)
    y = m(x, refs, active_keys=active, key_mask=mask)
    y_ref, _ = acla_ref(m.state_dict(), {"keys": [3, 2]}, x, refs, active_keys=active,
                        key_mask=mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_sliced_module_matches_reference():
    big = make(keys=(4, 2, 3)).eval()
    x, refs = inputs(3)
    active = [2, 0, 3]
    small = big.sliced(active)
    y_ref, _ = acla_ref(big.state_dict(), {"keys": [4, 2, 3]}, x, refs, active_keys=active)
    torch.testing.assert_close(small(x, ACLA.select_refs(refs, active)), y_ref,
                               rtol=1e-5, atol=1e-5)


def test_integer_offsets_and_map_border():
    """Offsets exactly on pixels (the initial slot grid) and points exactly on the border."""
    m = make(scale=0.0).eval()  # zero weights: offsets = the conv_offset bias
    with torch.no_grad():
        bias = torch.tensor([0, 0, 1, 0, -1, -1, float(W - 1), 0.5, -0.5, float(H)],
                            dtype=m.conv_offset.bias.dtype)
        m.conv_offset.bias.copy_(bias)
        m.conv_logit.bias.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64))
        m.conv_refer.weight.copy_(torch.eye(C, dtype=torch.float64)[:, :, None, None])
        m.conv_refer.bias.fill_(0.25)  # zero padding must not see the bias
        m.proj.weight.copy_(torch.eye(C, dtype=torch.float64)[:, :, None, None])
    x, refs = inputs(2)
    y_ref, _ = acla_ref(m.state_dict(), {"keys": [3, 2], "adaptive": True}, x, refs)
    torch.testing.assert_close(m(x, refs), y_ref, rtol=1e-5, atol=1e-5)


def test_non_finite_offsets_read_zero():
    v = torch.randn(1, 1, 3, 3, 2, dtype=torch.float64)
    dx = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    dx = dx.view(1, 1, 1, 4).expand(1, 3, 3, 4).contiguous()
    base, fx, fy, inside = corner_plan(dx, torch.zeros_like(dx), [4])
    assert not inside.any() and torch.all(fx == 0) and torch.all(fy == 0)
    out = bilinear_gather(bordered([v[0]]), base, fx, fy, torch.ones_like(dx), None)
    assert torch.all(out == 0)


# ------------------------------------------------------------------------------ vs grid_sample
@pytest.mark.parametrize("mode, adaptive", [("train", True), ("eval", True), ("fixed", True),
                                            ("train", False), ("eval", False)])
def test_forward_and_gradients_equal_grid_sample_path(mode, adaptive, sampler):
    """Same values and the same gradient for x, refs and every parameter - the straight-through
    gradient of the keep/drop logits (which needs the samples of dropped keys) included."""
    m = make(adaptive=adaptive, offset_scale=2.0)
    m.train(mode == "train")
    key_mask = random_mask(5) if mode == "fixed" else None
    results = []
    for path in (sampler, "grid_sample"):
        m.sampler = path
        m.zero_grad(set_to_none=True)
        x, refs = inputs(2, grad=True)
        torch.manual_seed(11)
        out = m(x, refs, key_mask=key_mask)
        out.pow(2).sum().backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        results.append((out.detach(), x.grad, [r.grad for r in refs], grads))
    m.sampler = sampler
    (y1, gx1, gr1, gp1), (y0, gx0, gr0, gp0) = results
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx1, gx0, rtol=1e-9, atol=1e-9)
    for a, b in zip(gr1, gr0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for name in gp0:
        if gp0[name] is None:
            assert gp1[name] is None or torch.all(gp1[name] == 0), name
        else:
            torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-9, atol=1e-9, msg=name)
    if adaptive and mode != "fixed":
        assert gp1["conv_mask.weight"].abs().sum() > 0


def test_bad_sampler_name():
    m = make()
    m.sampler = "bilinear"
    x, refs = inputs(2)
    with pytest.raises(ValueError, match="sampler"):
        m(x, refs)


# ------------------------------------------------------------------------------ gradcheck
def test_gradcheck_operator():
    """The raw operator, w.r.t. values, fx, fy and weights (dropped pairs masked out)."""
    g = torch.Generator().manual_seed(0)
    b, h, w, c, keys = 1, 3, 4, 2, [2, 1]
    s = sum(keys)
    maps = [torch.randn(b, h, w, c, generator=g, dtype=torch.float64, requires_grad=True)
            for _ in keys]
    dx = torch.rand(b, h, w, s, generator=g, dtype=torch.float64) * 5 - 2.5
    dy = torch.rand(b, h, w, s, generator=g, dtype=torch.float64) * 5 - 2.5
    base, fx, fy, inside = corner_plan(dx, dy, keys)
    fx.requires_grad_(True)
    fy.requires_grad_(True)
    a = torch.rand(b, h, w, s, generator=g, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(b, h, w, s, generator=g) > 0.3) & inside
    assert 0 < keep.sum() < keep.numel()

    def fn(m0, m1, fx, fy, a):
        return bilinear_gather(bordered([m0, m1]), base, fx, fy, a * keep, keep)

    assert torch.autograd.gradcheck(fn, (*maps, fx, fy, a))
    assert torch.autograd.gradcheck(lambda *t: bilinear_gather(bordered(t[:2]), base, *t[2:]),
                                    (*maps, fx, fy, a))


def test_probe_gives_the_sample_dot_for_dropped_pairs():
    """probe=True: dL/dweights of dropped pairs equals that of the all-pairs sum at weight 0."""
    g = torch.Generator().manual_seed(1)
    b, h, w, c, keys = 2, 3, 3, 3, [2, 2]
    s = sum(keys)
    values = bordered([torch.randn(b, h, w, c, generator=g, dtype=torch.float64) for _ in keys])
    dx = torch.rand(b, h, w, s, generator=g, dtype=torch.float64) * 4 - 2
    dy = torch.rand(b, h, w, s, generator=g, dtype=torch.float64) * 4 - 2
    base, fx, fy, inside = corner_plan(dx, dy, keys)
    keep = (torch.rand(b, h, w, s, generator=g) > 0.4) & inside
    a = torch.rand(b, h, w, s, generator=g, dtype=torch.float64) * keep
    gout = torch.randn(b, h, w, c, generator=g, dtype=torch.float64)
    grads = {}
    for name, k, probe in (("all", None, False), ("probe", keep, True), ("plain", keep, False)):
        wt = a.clone().requires_grad_(True)
        bilinear_gather(values, base, fx, fy, wt, k, probe).backward(gout)
        grads[name] = wt.grad
    torch.testing.assert_close(grads["probe"], grads["all"])
    torch.testing.assert_close(grads["plain"], grads["all"] * keep)


@pytest.mark.parametrize("adaptive, use_mask", [(False, False), (True, True)])
@pytest.mark.parametrize("training", [False, True])
def test_gradcheck_module(adaptive, use_mask, training):
    """ACLA end to end: x, the references and every weight (offsets, logits, projections)."""
    torch.manual_seed(0)
    m = make(keys=(2, 1), adaptive=adaptive, offset_scale=2.0).train(training)
    x, refs = inputs(2, b=1, h=3, w=4, grad=True)
    key_mask = random_mask(3, b=1, h=3, w=4) if use_mask else None
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in m.named_parameters()]

    def fn(x, r0, r1, *ps):
        return functional_call(m, dict(zip(names, ps)), (x, [r0, r1]), {"key_mask": key_mask})

    assert torch.autograd.gradcheck(fn, (x, *refs, *params))


# ------------------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("adaptive", [True, False])
def test_bfloat16_autocast(adaptive, sampler):
    """Under CPU bf16 autocast the sparse path equals the grid_sample path (both sample in
    float32 from the same bf16 projections) and, without the discrete keep mask, stays close to
    the float32 result."""
    m = make(adaptive=adaptive, offset_scale=2.0, dtype=torch.float32).eval()
    x, refs = inputs(2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = []
        for path in (sampler, "grid_sample"):
            m.sampler = path
            out.append(m(x, refs))
    m.sampler = sampler
    assert out[0].dtype == out[1].dtype and torch.isfinite(out[0]).all()
    torch.testing.assert_close(out[0], out[1], rtol=2e-2, atol=2e-2)
    if not adaptive:  # the attention branch itself (y - x), not swamped by the identity
        branch, ref = out[0].float() - x, m(x, refs) - x
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(branch, ref, rtol=0.05, atol=0.03 * float(ref.abs().max()))


def test_low_precision_inputs_compute_in_float32():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 3, 3, 4, generator=g).bfloat16().requires_grad_(True)]
    dx = torch.rand(1, 3, 3, 2, generator=g) * 2 - 1
    base, fx, fy, _ = corner_plan(dx.bfloat16(), dx.bfloat16(), [2])
    assert fx.dtype == torch.float32
    a = torch.rand(1, 3, 3, 2, generator=g)
    out = bilinear_gather(bordered(maps), base, fx, fy, a)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert maps[0].grad.dtype == torch.bfloat16 and torch.isfinite(maps[0].grad).all()


# ------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("cfg, active", [
    ({"keys": [3, 2]}, None),
    ({"keys": [9], "adaptive": False}, None),
    ({"keys": [3, 4, 5]}, [2, 0, 4]),
])
def test_meta_flops_equal_formula(cfg, active):
    m = ACLA(8, len(cfg["keys"]), **cfg).to("meta").eval()
    x = torch.empty(1, 8, 7, 9, device="meta")
    refs = [torch.empty_like(x) for _ in cfg["keys"]]
    kw = {} if active is None else {"active_keys": active}
    flop_cfg = {**cfg, **({"keys": active} if active else {})}
    assert measure_flops(m, x, refs, **kw) == ACLA.flops(8, 7, 9, flop_cfg)


def test_both_samplers_count_the_same_flops(sampler):
    m = make(keys=(3, 2)).float().eval()
    x, refs = inputs(2, dtype=torch.float32)
    counts = []
    for path in (sampler, "grid_sample"):
        m.sampler = path
        counts.append(measure_flops(m, x, refs))
    m.sampler = sampler
    assert counts[0] == counts[1] == B * ACLA.flops(C, H, W, {"keys": [3, 2]})


def test_operator_flop_formula_is_registered():
    assert EXTRA_FLOP_FORMULAS[torch.ops.acla_nas.bilinear_gather] is bilinear_gather_flop
    b, h, w, s, c = 2, 3, 5, 4, 6
    values = torch.empty(2, b, h + 2, w + 2, c, device="meta")
    z = torch.empty(b, h, w, s, device="meta")
    with FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
        out = bilinear_gather(values, z.long(), z, z, z, None)
    assert out.shape == (b, h, w, c) and out.device.type == "meta"
    assert counter.get_total_flops() == 2 * (4 + 1) * b * h * w * s * c


# ------------------------------------------------------------------------------ masked keys
def sampled_pairs(m, x, refs, ignore_keep=False, **kw):
    """Pairs a path samples: kept (unless ``ignore_keep``) and inside the map (recomputed
    independently)."""
    active = m.check_active_keys(kw.get("active_keys"))
    dx, dy, _, mask_logits = m._query(x, m._slot_ranges(active))
    keep = kw.get("key_mask")
    if keep is None and mask_logits is not None:
        keep = mask_logits > 0
        keep |= mask_logits == mask_logits.amax(dim=1, keepdim=True)
    used = [k for k in active if k > 0]
    _, _, _, inside = corner_plan(dx.permute(0, 2, 3, 1), dy.permute(0, 2, 3, 1), used)
    if keep is not None and not ignore_keep:
        inside = inside & keep.permute(0, 2, 3, 1)
    return int(inside.sum())


@pytest.mark.parametrize("kw", [{}, {"active_keys": [1, 2]}, {"active_keys": [0, 2]}, "mask"])
def test_masked_keys_are_not_sampled(kw):
    m = make(keys=(3, 2), offset_scale=4.0).eval()
    x, refs = inputs(2)
    if kw == "mask":
        kw = {"key_mask": random_mask(5, p=0.7)}
    expected = sampled_pairs(m, x, refs, **kw)
    assert expected < B * H * W * sum(m.check_active_keys(kw.get("active_keys")))
    plan_stats(reset=True)
    with torch.no_grad():
        m(x, refs, **kw)
    stats = plan_stats(reset=True)
    assert stats == {"forward": 4 * expected, "probe": 0}


def test_dropped_keys_only_probed_for_the_straight_through_gradient(sampler):
    """Dropped pairs are probed in the backward: all of them on the sparse path, those whose
    footprint is on the map on the fused one (the others read 0 and have zero gradient)."""
    m = make(keys=(3, 2), offset_scale=2.0).eval()
    x, refs = inputs(2)
    kept = sampled_pairs(m, x, refs)
    candidates = B * H * W * 5 if sampler == "sparse" else sampled_pairs(m, x, refs, True)
    assert candidates < B * H * W * 5 or sampler == "sparse"
    plan_stats(reset=True)
    m(x, refs).sum().backward()  # learned mask with a gradient: dropped pairs are probed
    stats = plan_stats(reset=True)
    assert stats["forward"] == 4 * kept and 0 < stats["probe"] == 4 * (candidates - kept)
    m(x, refs, key_mask=random_mask(5)).sum().backward()  # fixed mask: nothing to probe
    assert plan_stats(reset=True)["probe"] == 0


def test_fewer_keys_fewer_entries():
    m = make(keys=(9, 9), scale=0.0).eval()  # initial slot grid, every point inside
    x, refs = inputs(2)
    counts = []
    for k in (1, 4, 9):
        plan_stats(reset=True)
        with torch.no_grad():
            m(x, refs, active_keys=[k, k])
        counts.append(plan_stats(reset=True)["forward"])
    assert counts == [4 * B * H * W * 2 * k for k in (1, 4, 9)]


# ------------------------------------------------------------------------------ errors
def test_operator_shape_errors():
    values = torch.zeros(1, 1, 5, 6, 2)
    z = torch.zeros(1, 3, 4, 2)
    with pytest.raises(ValueError, match="values"):
        bilinear_gather(values[:, :, :-1], z.long(), z, z, z)
    with pytest.raises(ValueError, match="fx"):
        bilinear_gather(values, z.long(), z[..., :1], z, z)
    with pytest.raises(ValueError, match="base"):
        bilinear_gather(values, z, z, z, z)
    with pytest.raises(ValueError, match="keep"):
        bilinear_gather(values, z.long(), z, z, z, z)
    with pytest.raises(ValueError, match="keys"):
        corner_plan(z, z, [1])
    with pytest.raises(ValueError, match="dx, dy"):
        corner_plan(z, z[..., :1], [2])


def test_grid_sample_path_is_f_grid_sample(sampler):
    """The kept comparison path still calls F.grid_sample (and the sparse one does not)."""
    m = make()
    x, refs = inputs(2)
    calls = []
    orig = F.grid_sample

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    F.grid_sample = spy
    try:
        m.sampler = "grid_sample"
        m(x, refs)
        n_gs = len(calls)
        m.sampler = sampler
        m(x, refs)
    finally:
        F.grid_sample = orig
    assert n_gs == 2 and len(calls) == 2
