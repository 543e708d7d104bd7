"""Tests of the registered attention operators (search_spaces.operators)."""

from __future__ import annotations

import math

import pytest
import torch

from nas.engine.flops import measure_flops
from search_spaces.operators import ACLA, NLA, OPERATORS, RELA, LCoA
from search_spaces.operators.acla import slot_grid
from tests.reference_ops import acla_ref, lcoa_ref, nla_ref, rela_ref

C, H, W, B = 8, 6, 5, 2

#: (num_refs, config) of a small instance of every registered operator.
SMALL = {
    "acla": (2, {"keys": [3, 2]}),
    "rela": (0, {"heads": 2, "dw_kernel": 3}),
    "lcoa": (0, {"reduction": 2, "n_clusters": 4, "window": 8}),
    "nla": (0, {}),
}
OP_NAMES = list(OPERATORS)


def make(name, channels=C, dtype=torch.float64, seed=0, **override):
    num_refs, cfg = SMALL[name]
    cfg = {**cfg, **override}
    torch.manual_seed(seed)
    return OPERATORS.get(name)(channels, num_refs, **cfg).to(dtype), num_refs, cfg


def inputs(num_refs, channels=C, h=H, w=W, b=B, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, channels, h, w, generator=g, dtype=dtype)
    refs = [torch.randn(b, channels, h, w, generator=g, dtype=dtype) for _ in range(num_refs)]
    return x, refs


def randomize(module, scale=0.5, seed=2):
    """Random non-zero weights everywhere (the output projection included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def test_every_operator_has_a_test_config():
    assert set(OPERATORS) == set(SMALL)


# ------------------------------------------------------------------------------ generic contract
@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_identity_at_init(name, training):
    m, nr, _ = make(name)
    m.train(training)
    x, refs = inputs(nr)
    assert torch.equal(m(x, refs), x)


@pytest.mark.parametrize("name", OP_NAMES)
def test_forward_backward_finite_and_all_params_get_grads(name):
    m, nr, _ = make(name, dtype=torch.float32)
    m.train()
    with torch.no_grad():
        m.proj.weight.normal_(0, 0.5)
    x, refs = inputs(nr, dtype=torch.float32)
    x.requires_grad_(True)
    y = m(x, refs)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y ** 2).mean().backward()
    assert torch.isfinite(x.grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


@pytest.mark.parametrize("name", OP_NAMES)
def test_bad_input_shapes(name):
    m, nr, _ = make(name)
    x, refs = inputs(nr)
    with pytest.raises(ValueError, match="x must be"):
        m(x[:, :-1], refs)
    with pytest.raises(ValueError, match="channels"):
        OPERATORS.get(name)(0, nr, **SMALL[name][1])
    if m.uses_refs:
        with pytest.raises(ValueError, match="refs"):
            m(x, refs[:-1])
        with pytest.raises(ValueError, match=r"refs\[0\]"):
            m(x, [refs[0][..., :-1]] + refs[1:])


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("acla", {"num_refs": 2, "keys": [0, 2]}, r"keys\[0\]"),
        ("acla", {"num_refs": 2, "keys": [3]}, "keys"),
        ("acla", {"num_refs": 0, "keys": []}, "num_refs"),
        ("acla", {"num_refs": 1, "keys": [2], "tau": 0.0}, "tau"),
        ("rela", {"heads": 3}, "heads"),
        ("rela", {"heads": 0}, "heads"),
        ("rela", {"dw_kernel": 4}, "dw_kernel"),
        ("rela", {"feature_map": "tanh"}, "feature_map"),
        ("lcoa", {"reduction": 3}, "reduction"),
        ("lcoa", {"n_clusters": 0}, "n_clusters"),
        ("lcoa", {"window": 0}, "window"),
        ("lcoa", {"ema_decay": 1.0}, "ema_decay"),
        ("nla", {"reduction": 3}, "reduction"),
    ],
)
def test_bad_constructor_args(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OPERATORS.get(name)(C, **kwargs)


def test_acla_bad_forward_args():
    m, nr, _ = make("acla")
    x, refs = inputs(nr)
    with pytest.raises(ValueError, match="active_keys"):
        m(x, refs, active_keys=[4, 1])
    with pytest.raises(ValueError, match="active_keys"):
        m(x, refs, active_keys=[1])
    with pytest.raises(ValueError, match="key_mask"):
        m(x, refs, key_mask=torch.zeros(B, 5, H, W, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_mask"):
        m(x, refs, key_mask=torch.ones(B, 4, H, W, dtype=torch.bool))


@pytest.mark.parametrize("name", OP_NAMES)
def test_autocast_cpu_bfloat16(name):
    m, nr, _ = make(name, dtype=torch.float32)
    randomize(m, 0.2)
    m.eval()
    x, refs = inputs(nr, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x, refs)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", OP_NAMES)
def test_forward_on_meta_device(name):
    """Runs on a device without data: no CPU tensor is mixed in (a CUDA-safety proxy), and the
    FLOP count measured there is the analytic one."""
    m, nr, cfg = make(name, dtype=torch.float32)
    m = m.to("meta").eval()
    x = torch.empty(1, C, H, W, device="meta")
    refs = [torch.empty_like(x) for _ in range(nr)]
    assert m(x, refs).device.type == "meta"
    assert measure_flops(m, x, refs) == OPERATORS.get(name).flops(C, H, W, cfg)
    if name != "lcoa":  # LCoA's training path reads the k-means flag (needs data)
        m.train()
        m(x, refs)


# ------------------------------------------------------------------------------ vs references
@pytest.mark.parametrize("adaptive", [False, True])
def test_acla_matches_reference(adaptive):
    m, nr, cfg = make("acla", adaptive=adaptive)
    randomize(m).eval()
    x, refs = inputs(nr)
    y = m(x, refs)
    y_ref, w_ref = acla_ref(m.state_dict(), {**cfg, "adaptive": adaptive}, x, refs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.attend(x, refs).weights, w_ref, rtol=1e-5, atol=1e-5)
    if adaptive:  # the deterministic threshold dropped some keys and kept others
        keep = m.attend(x, refs).keep
        assert 0 < keep.sum() < keep.numel()


@pytest.mark.parametrize("active", [None, [2, 0], [1, 2]])
def test_acla_matches_reference_with_fixed_mask(active):
    m, nr, cfg = make("acla")
    randomize(m).eval()
    x, refs = inputs(nr)
    s = sum(cfg["keys"]) if active is None else sum(active)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(B, s, H, W, generator=g) > 0.5
    mask[:, 0] |= ~mask.any(dim=1)  # every query keeps at least one slot
    y = m(x, refs, active_keys=active, key_mask=mask)
    y_ref, _ = acla_ref(m.state_dict(), cfg, x, refs, active_keys=active, key_mask=mask)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_rela_matches_reference(feature_map):
    m, _, cfg = make("rela", feature_map=feature_map)
    randomize(m)
    x, _ = inputs(0)
    torch.testing.assert_close(m(x), rela_ref(m.state_dict(), cfg, x), rtol=1e-5, atol=1e-5)


def test_nla_matches_reference():
    m, _, cfg = make("nla")
    randomize(m)
    x, _ = inputs(0)
    torch.testing.assert_close(m(x), nla_ref(m.state_dict(), cfg, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [5, 8, 16, 64])  # 6 chunks, 4 (padded), 2 (padded), 1
def test_lcoa_matches_reference(window):
    m, _, cfg = make("lcoa", window=window)
    randomize(m).eval()
    x, _ = inputs(0)
    y = m(x)
    torch.testing.assert_close(y, lcoa_ref(m.state_dict(), {**cfg, "window": window}, x),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ FLOPs
FLOP_CASES = [
    ("acla", 8, 6, 5, {"keys": [3, 2]}, {}),
    ("acla", 16, 7, 11, {"keys": [9], "adaptive": False}, {}),
    ("acla", 8, 9, 9, {"keys": [3, 4, 5]}, {"active_keys": [2, 0, 4]}),
    ("acla", 8, 5, 8, {"keys": [3, 4]}, {"active_keys": [0, 0]}),
    ("rela", 16, 7, 9, {"heads": 4, "dw_kernel": 5}, {}),
    ("rela", 12, 8, 3, {"heads": 3, "dw_kernel": 1, "feature_map": "relu"}, {}),
    ("lcoa", 16, 9, 7, {"reduction": 4, "n_clusters": 8, "window": 10}, {}),
    ("lcoa", 8, 6, 5, {"reduction": 1, "n_clusters": 3, "window": 64}, {}),
    ("lcoa", 8, 13, 11, {"reduction": 2, "n_clusters": 5, "window": 48}, {}),
    ("nla", 16, 7, 9, {"reduction": 2}, {}),
    ("nla", 8, 5, 13, {"reduction": 4}, {}),
]


@pytest.mark.parametrize("name, c, h, w, cfg, fwd", FLOP_CASES)
def test_flops_formula_equals_measured(name, c, h, w, cfg, fwd):
    op = OPERATORS.get(name)
    nr = len(cfg["keys"]) if "keys" in cfg else 0
    m = op(c, nr, **cfg).eval()
    x, refs = inputs(nr, channels=c, h=h, w=w, b=1, dtype=torch.float32)
    flop_cfg = dict(cfg)
    if "active_keys" in fwd:
        flop_cfg["keys"] = fwd["active_keys"]
    measured = measure_flops(m, x, refs, **fwd)
    assert op.flops(c, h, w, flop_cfg) == measured
    # the count scales with the batch size
    x2, refs2 = inputs(nr, channels=c, h=h, w=w, b=2, dtype=torch.float32)
    assert measure_flops(m, x2, refs2, **fwd) == 2 * measured


def test_lcoa_shared_flops_equal_measured_and_lower():
    leader = LCoA(16, reduction=2, n_clusters=8, window=12).eval()
    follower = LCoA(16, reduction=2, n_clusters=8, window=12, collaborative=True).eval()
    x, _ = inputs(0, channels=16, h=9, w=7, b=1, dtype=torch.float32)
    ctx: dict = {}
    leader(x, ctx=ctx)
    cfg = {"reduction": 2, "n_clusters": 8, "window": 12}
    measured = measure_flops(follower, x, [], ctx)
    assert follower.last_shared
    assert measured == LCoA.flops(16, 9, 7, {**cfg, "shared": True})
    assert measured < LCoA.flops(16, 9, 7, cfg)


def test_flops_reference_sizes_are_consistent():
    """The formulas grow as documented: NLA quadratically, the others linearly in H·W."""
    for name, cfg in [("acla", {"keys": [9, 9]}), ("rela", {}), ("lcoa", {"window": 16})]:
        f1 = OPERATORS.get(name).flops(64, 32, 32, cfg)
        f2 = OPERATORS.get(name).flops(64, 64, 64, cfg)
        assert f2 == 4 * f1
    assert NLA.flops(64, 64, 64, {}) > 10 * NLA.flops(64, 32, 32, {})


# ------------------------------------------------------------------------------ ACLA specifics
def test_acla_slot_grid_distinct_and_nested():
    pts = slot_grid(25)
    assert len(set(pts)) == 25 and pts[0] == (0, 0)
    assert set(slot_grid(9)) == {(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    assert slot_grid(4) == slot_grid(9)[:4]
    m = ACLA(C, 1, keys=[9])
    off = m.conv_offset.bias.view(9, 2)
    assert len({tuple(r.tolist()) for r in off}) == 9


def test_acla_dilation_sets_the_initial_reach():
    """With ``dilation=d`` the 9 slots start on the 3x3 grid spaced ``d`` pixels: an impulse in
    the reference reaches exactly the queries at ``impulse - d * (dx, dy)`` (naive bookkeeping),
    and the sliced module keeps the spacing."""
    d, y0, x0 = 3, 6, 5
    m = ACLA(2, 1, keys=[9], adaptive=False, dilation=d)
    assert m.conv_offset.bias.view(9, 2).tolist() == [[d * dx, d * dy] for dx, dy in slot_grid(9)]
    with torch.no_grad():
        m.conv_refer.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        m.conv_refer.bias.zero_()
    ref = torch.zeros(1, 2, 12, 11)
    ref[0, :, y0, x0] = 1.0
    with torch.no_grad():
        agg = m.attend(torch.randn(1, 2, 12, 11), [ref]).agg
    hit = {tuple(p) for p in (agg[0].abs().sum(0) > 0).nonzero().tolist()}
    expect = {(y0 - d * dy, x0 - d * dx) for dx, dy in slot_grid(9)}
    assert hit == {(y, x) for y, x in expect if 0 <= y < 12 and 0 <= x < 11}
    assert m.sliced([4]).dilation == d
    assert ACLA(2, 1, keys=[4], dilation=d).conv_offset.bias.tolist() == \
        m.sliced([4]).conv_offset.bias.tolist()
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="dilation"):
            ACLA(2, 1, dilation=bad)


@pytest.mark.parametrize("mode", ["train", "eval", "fixed"])
def test_acla_masked_keys_are_removed_from_softmax(mode):
    m, nr, cfg = make("acla")
    randomize(m)
    m.train(mode == "train")
    x, refs = inputs(nr)
    key_mask = None
    if mode == "fixed":
        key_mask = torch.zeros(B, 5, H, W, dtype=torch.bool)
        key_mask[:, 1] = True
        key_mask[:, 3] = True
    with torch.no_grad():
        out = m.attend(x, refs, key_mask=key_mask)
    w, keep = out.weights, out.keep
    assert 0 < keep.sum() < keep.numel()
    assert torch.all(w[~keep] == 0)  # exactly zero, not just down-weighted
    assert torch.all(w[keep] > 0)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(B, H, W, dtype=w.dtype))
    assert keep.any(dim=1).all()


def test_acla_weights_exact_with_gradient_carrier():
    """In training with gradients on, the straight-through terms leave the values untouched."""
    m, nr, _ = make("acla")
    randomize(m).train()
    x, refs = inputs(nr)
    torch.manual_seed(3)
    out = m.attend(x, refs)
    assert out.weights.requires_grad
    assert torch.all(out.weights[~out.keep] == 0)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(B, H, W, dtype=x.dtype))


def test_acla_straight_through_mask_gets_gradient():
    m, nr, _ = make("acla")
    randomize(m).train()
    x, refs = inputs(nr)
    out = m.attend(x, refs)
    assert not out.keep.all()
    m(x, refs).square().mean().backward()
    g = m.conv_mask.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # a fixed mask bypasses the learned one: no gradient for it then
    m.zero_grad(set_to_none=True)
    m(x, refs, key_mask=out.keep).square().mean().backward()
    g = m.conv_mask.weight.grad
    assert g is None or torch.all(g == 0)


def test_acla_straight_through_gradient_is_the_renormalised_relaxation():
    """dL/dm_s = r_s (G_s - Σ_i w_i G_i), r_s = e^{A_s} / Σ_kept e^{A_j}, for kept AND dropped s;
    m_s = sigmoid(M_s / tau) (straight-through), checked on ``conv_mask.bias`` in eval mode."""
    m, nr, _ = make("acla", tau=0.7)
    randomize(m).eval()
    x, refs = inputs(nr)
    out = m.attend(x, refs)
    g = torch.randn_like(out.weights)
    (out.weights * g).sum().backward()
    with torch.no_grad():
        logits = torch.nn.functional.conv2d(x, m.conv_logit.weight, m.conv_logit.bias)
        ml = torch.nn.functional.conv2d(x, m.conv_mask.weight, m.conv_mask.bias)
        lse = torch.logsumexp(logits.masked_fill(~out.keep, float("-inf")), 1, keepdim=True)
        r = torch.exp(logits - lse)
        dl_dm = r * (g - (out.weights * g).sum(1, keepdim=True))
        sig = torch.sigmoid(ml / 0.7)
        expected = (dl_dm * sig * (1 - sig) / 0.7).sum((0, 2, 3))
    assert not out.keep.all()
    torch.testing.assert_close(m.conv_mask.bias.grad, expected)


def test_acla_gumbel_is_stochastic_in_training_and_deterministic_in_eval():
    m, nr, _ = make("acla")
    randomize(m)
    x, refs = inputs(nr)
    m.train()
    k1, k2 = m.attend(x, refs).keep, m.attend(x, refs).keep
    assert not torch.equal(k1, k2)
    m.eval()
    assert torch.equal(m.attend(x, refs).keep, m.attend(x, refs).keep)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("adaptive", [True, False])
def test_acla_first_k_slots_equal_sliced_module(training, adaptive):
    torch.manual_seed(0)
    big = ACLA(C, 3, keys=[4, 2, 3], adaptive=adaptive).double()
    randomize(big).train(training)
    x, refs = inputs(3)
    active = [2, 0, 3]
    small = big.sliced(active)
    assert small.keys == (2, 3) and small.num_refs == 2
    fresh = ACLA(C, 2, keys=[2, 3], adaptive=adaptive).double()
    assert set(fresh.state_dict()) == set(big.sliced_state_dict(active))
    fresh.load_state_dict(big.sliced_state_dict(active))
    fresh.train(training)
    torch.manual_seed(11)
    y_big = big(x, refs, active_keys=active)
    for other in (small, fresh):
        torch.manual_seed(11)
        y_small = other(x, ACLA.select_refs(refs, active))
        torch.testing.assert_close(y_big, y_small, rtol=0, atol=1e-12)


def test_acla_fresh_small_module_starts_like_first_slots_of_big():
    big, small = ACLA(C, 1, keys=[9]), ACLA(C, 1, keys=[4])
    torch.testing.assert_close(small.conv_offset.bias, big.conv_offset.bias[:8])


def test_acla_all_keys_inactive_is_identity():
    m, nr, _ = make("acla")
    randomize(m)
    x, refs = inputs(nr)
    assert m(x, refs, active_keys=[0, 0]) is x
    with pytest.raises(ValueError, match="active_keys"):
        m.sliced([0, 0])


# ------------------------------------------------------------------------------ LCoA specifics
def test_lcoa_kmeans_init_and_ema_only_in_training():
    m, _, _ = make("lcoa", dtype=torch.float32, ema_decay=0.9)
    x, _ = inputs(0, dtype=torch.float32)
    before = m.means.clone()
    m.eval()
    m(x)
    assert torch.equal(m.means, before) and not bool(m.initialized)
    m.train()
    m(x)  # k-means initialisation + first EMA step
    assert bool(m.initialized) and not torch.equal(m.means, before)
    after_init = m.means.clone()
    m(x + 0.5 * torch.randn_like(x))
    assert not torch.equal(m.means, after_init)  # the EMA is applied to the buffer
    torch.testing.assert_close(m.means.norm(dim=-1), torch.ones(m.n_clusters))
    m.eval()
    frozen = m.means.clone()
    m(x + 0.5 * torch.randn_like(x))
    assert torch.equal(m.means, frozen)


def test_lcoa_collaborative_reuse_equals_recompute():
    leader, _, _ = make("lcoa", window=8)
    follower, _, _ = make("lcoa", window=8, seed=7, collaborative=True)
    randomize(leader, seed=3)
    randomize(follower, seed=4)
    follower.conv_match.load_state_dict(leader.conv_match.state_dict())
    follower.means.copy_(leader.means)
    leader.eval()
    follower.eval()
    x, _ = inputs(0)
    ctx: dict = {}
    leader(x, ctx=ctx)
    assert "lcoa" in ctx and not leader.last_shared
    y_shared = follower(x, ctx=ctx)
    assert follower.last_shared
    y_own = follower(x)
    assert not follower.last_shared
    torch.testing.assert_close(y_shared, y_own, rtol=1e-12, atol=1e-12)
    # a non-collaborative module ignores the shared map and does not overwrite it
    first = ctx["lcoa"]
    leader(x, ctx=ctx)
    assert ctx["lcoa"] is first and not leader.last_shared


def test_lcoa_collaborative_gradient_reaches_leader_and_size_is_checked():
    leader, _, _ = make("lcoa", dtype=torch.float32)
    follower, _, _ = make("lcoa", dtype=torch.float32, collaborative=True)
    for m in (leader, follower):
        randomize(m, 0.3).train()
    x, _ = inputs(0, dtype=torch.float32)
    ctx: dict = {}
    h = leader(x, ctx=ctx)
    follower(h.detach(), ctx=ctx).square().mean().backward()
    assert follower.last_shared
    assert leader.conv_match.weight.grad.abs().sum() > 0
    assert follower.conv_match.weight.grad is None  # unused on the shared path
    x_small, _ = inputs(0, h=4, w=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="ctx"):
        follower(x_small, ctx=ctx)


def test_lcoa_collaborative_without_map_computes_and_publishes():
    m, _, _ = make("lcoa", collaborative=True)
    x, _ = inputs(0)
    ctx: dict = {}
    m.eval()(x, ctx=ctx)
    assert not m.last_shared and "lcoa" in ctx


def test_rela_heads_must_divide_channels_message():
    with pytest.raises(ValueError, match="heads=3 must divide channels=8"):
        RELA(8, heads=3)


def test_flops_are_ints():
    for name in OP_NAMES:
        nr, cfg = SMALL[name]
        f = OPERATORS.get(name).flops(C, H, W, cfg)
        assert isinstance(f, int) and f > 0 and math.isfinite(f)
