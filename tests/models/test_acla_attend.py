"""Tests of ACLA's fused attention core (search_spaces.operators.acla_fused.attend): the keep
decision, the masked softmax with its straight-through gradient and the gather in one kernel,
against the same function composed of PyTorch operators and the sparse path (itself tested
against the naive reference and grid_sample in test_acla_sampling.py), gradcheck, float32
accuracy of the kernel's polynomial exp, the FLOP counter and argument errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.engine.flops import EXTRA_FLOP_FORMULAS
from search_spaces.operators.acla import ST_LOG_CLAMP, _MaskedSoftmaxST
from search_spaces.operators.acla_fused import attend
from search_spaces.operators.acla_sampling import corner_plan, plan_stats
from tests.models.acla_paths import sparse_gather

B, H, W, C = 2, 5, 6, 3
KEYS = [3, 2]
S = sum(KEYS)


pytestmark = pytest.mark.usefixtures("fused_kernel")


def case(adaptive=True, dtype=torch.float64, seed=0, h=H, w=W, logit_scale=1.0, mask_shift=0.5):
    """q (dx, dy interleaved per slot, logits, keep logits), value maps, logistic noise, a fixed
    key mask and output / weight gradients."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, (4 if adaptive else 3) * S, h, w, generator=g, dtype=dtype)
    q[:, :2 * S] *= 3.0  # offsets: many points partly or fully outside the map
    q[:, 2 * S:3 * S] *= logit_scale
    if adaptive:
        q[:, 3 * S:] += mask_shift
    maps = torch.randn(len(KEYS), B, h, w, C, generator=g, dtype=dtype)
    u = torch.rand(B, S, h, w, generator=g, dtype=dtype).clamp(1e-6, 1 - 1e-6)
    noise = torch.logit(u)
    key_mask = torch.rand(B, S, h, w, generator=g) > 0.5
    key_mask[:, 0] |= ~key_mask.any(dim=1)
    g_out = torch.randn(B, h, w, C, generator=g, dtype=dtype)
    g_w = torch.randn(B, S, h, w, generator=g, dtype=dtype)
    return q, maps, noise, key_mask, g_out, g_w


def composite(q, maps, adaptive, noise, key_mask, tau, st):
    """The same function from PyTorch operators: ACLA's keep rule and masked softmax
    (_MaskedSoftmaxST when st) and the sparse gather on slot-last tensors."""
    dx, dy, logits = q[:, 0:2 * S:2], q[:, 1:2 * S:2], q[:, 2 * S:3 * S]
    score = None
    if key_mask is not None:
        keep = key_mask
    elif adaptive:
        score = q[:, 3 * S:] if noise is None else q[:, 3 * S:] + noise
        with torch.no_grad():
            keep = score > 0
            keep |= score == score.amax(dim=1, keepdim=True)
    else:
        keep = None
    if st:
        weights = _MaskedSoftmaxST.apply(logits, keep, score, tau)
    else:
        masked = logits if keep is None else logits.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(masked, dim=1)
    return sparse_gather(maps, dx, dy, weights, keep, KEYS, st), weights, keep


def run(fn, q, maps, g_out, g_w, **kw):
    q = q.detach().clone().requires_grad_(True)
    maps = maps.detach().clone().requires_grad_(True)
    out, weights, keep = fn(q, maps, **kw)
    (out * g_out).sum().add((weights * g_w).sum()).backward()
    return out.detach(), weights.detach(), keep, q.grad, maps.grad


@pytest.mark.parametrize("adaptive, use_noise, use_mask, st", [
    (True, True, False, True),     # training: logistic noise, straight-through gradient
    (True, False, False, True),    # eval with input gradients (the alpha step)
    (True, False, False, False),   # no straight-through gradient: keep logits get 0
    (True, False, True, False),    # a fixed key mask
    (False, False, False, False),  # non-adaptive: every slot kept
    (False, False, True, False),
])
def test_equals_the_composite_float64(adaptive, use_noise, use_mask, st):
    q, maps, noise, key_mask, g_out, g_w = case(adaptive)
    kw = dict(adaptive=adaptive, noise=noise if use_noise else None,
              key_mask=key_mask if use_mask else None, tau=0.7, st=st)
    got = run(lambda q, m, **k: attend(q, m, KEYS, st_log_clamp=ST_LOG_CLAMP, **k), q, maps, g_out,
              g_w, **kw)
    ref = run(composite, q, maps, g_out, g_w, **kw)
    for name, a, b in zip(("out", "weights", "keep", "dL/dq", "dL/dmaps"), got, ref):
        if name == "keep":
            assert (a is None) == (b is None) == (not adaptive and not use_mask)
            if a is not None:
                assert torch.equal(a, b)
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)
    g_mask = got[3][:, 3 * S:] if adaptive else None
    if st:  # the straight-through gradient reaches the keep logits, of dropped slots too
        assert g_mask.abs().sum() > 0 and not bool(got[2].all())
    elif adaptive:
        assert torch.all(g_mask == 0)


def test_keep_is_a_copy_of_the_key_mask():
    q, maps, _, key_mask, _, _ = case()
    _, _, keep = attend(q, maps, KEYS, adaptive=True, key_mask=key_mask)
    assert torch.equal(keep, key_mask) and keep.data_ptr() != key_mask.data_ptr()


@pytest.mark.parametrize("h, w", [(5, 6), (7, 37)])
def test_float32_close_to_float64(h, w):
    """float32 runs the kernel's polynomial exp, vectorised over rows of w queries (37: a
    remainder after the vector lanes); logits span +-60, so exp covers a wide range."""
    q, maps, noise, _, g_out, g_w = case(h=h, w=w, logit_scale=20.0, mask_shift=1.0)
    kw = dict(adaptive=True, noise=noise, tau=0.7, st=True, st_log_clamp=ST_LOG_CLAMP)
    ref = run(lambda q, m, **k: attend(q, m, KEYS, **k), q, maps, g_out, g_w, **kw)
    got = run(lambda q, m, **k: attend(q, m, KEYS, **k), q.float(), maps.float(), g_out.float(),
              g_w.float(), **kw)
    assert got[0].dtype == torch.float32 and torch.equal(got[2], ref[2])
    for name, a, b in zip(("out", "weights", "keep", "dL/dq", "dL/dmaps"), got, ref):
        if name != "keep":
            scale = float(b.abs().max())
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_weights_match_torch_softmax_in_float32():
    q, maps, _, _, _, _ = case(adaptive=False, dtype=torch.float32, logit_scale=30.0)
    _, weights, _ = attend(q, maps, KEYS, adaptive=False)
    torch.testing.assert_close(weights, torch.softmax(q[:, 2 * S:3 * S], dim=1), rtol=1e-5,
                               atol=1e-7)


def test_gradcheck_non_adaptive():
    """A smooth case (no keep decision): dL/dq and dL/dmaps of out and weights by finite
    differences."""
    q, maps, *_ = case(adaptive=False, seed=2)
    q[:, :2 * S] = q[:, :2 * S].frac() * 0.8 + 0.1  # away from integer offsets (kinks)
    q.requires_grad_(True)
    maps.requires_grad_(True)

    def fn(q, maps):
        out, weights, _ = attend(q, maps, KEYS, adaptive=False)
        return out, weights

    assert torch.autograd.gradcheck(fn, (q, maps))


def test_nan_keep_logits_follow_torch():
    """A query whose keep logits are all NaN keeps nothing and gets NaN weights, as the composite
    (torch.amax propagates NaN); other queries are unaffected."""
    q, maps, *_ = case()
    q[0, 3 * S:, 1, 2] = float("nan")
    out, weights, keep = attend(q, maps, KEYS, adaptive=True)
    ref_out, ref_w, ref_keep = composite(q, maps, True, None, None, 1.0, False)
    assert torch.equal(keep, ref_keep) and not bool(keep[0, :, 1, 2].any())
    assert torch.isnan(weights[0, :, 1, 2]).all() and torch.isnan(ref_w[0, :, 1, 2]).all()
    ok = torch.ones(B, H, W, dtype=torch.bool)
    ok[0, 1, 2] = False
    torch.testing.assert_close(weights.permute(0, 2, 3, 1)[ok], ref_w.permute(0, 2, 3, 1)[ok])
    torch.testing.assert_close(out[ok], ref_out[ok])


def test_dropped_keys_not_sampled():
    q, maps, noise, *_ = case()
    _, _, keep = attend(q, maps, KEYS, adaptive=True, noise=noise)
    _, _, _, inside = corner_plan(q[:, 0:2 * S:2].permute(0, 2, 3, 1),
                                  q[:, 1:2 * S:2].permute(0, 2, 3, 1), KEYS)
    expected = int((inside & keep.permute(0, 2, 3, 1)).sum())
    assert 0 < expected < B * H * W * S
    plan_stats(reset=True)
    attend(q, maps, KEYS, adaptive=True, noise=noise)
    assert plan_stats(reset=True) == {"forward": 4 * expected, "probe": 0}


def test_flops_registered_real_and_meta():
    """Counted as the softmax over B·S·H·W logits (3 FLOPs each, as aten._softmax is counted)
    plus the gather of every slot (2·(4+1)·B·H·W·S·C), data-independent."""
    q, maps, noise, *_ = case()
    expected = 3 * B * S * H * W + 2 * 5 * B * H * W * S * C
    for dev in ("cpu", "meta"):
        with FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS)) as counter:
            out, weights, keep = attend(q.to(dev), maps.to(dev), KEYS, adaptive=True,
                                        noise=noise.to(dev))
        assert counter.get_total_flops() == expected, dev
        assert out.shape == (B, H, W, C) and weights.shape == keep.shape == (B, S, H, W)


def test_argument_errors():
    q, maps, noise, key_mask, *_ = case()
    with pytest.raises(RuntimeError, match="q must be"):
        attend(q[:, :3 * S], maps, KEYS, adaptive=True)  # 3S channels for an adaptive module
    with pytest.raises(RuntimeError, match="one key count per value map"):
        attend(q, maps, [S], adaptive=True)
    with pytest.raises(RuntimeError, match="noise and key_mask"):
        attend(q, maps, KEYS, adaptive=True, noise=noise[:, :1])
