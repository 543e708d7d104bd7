import pytest
import torch

from backbones import BACKBONES, EDSR, count_params


@pytest.mark.parametrize(
    "scale,expected",
    # EDSR-PyTorch README: 1.37 M / 1.55 M / 1.52 M for x2 / x3 / x4; EDSR-PyTorch's log shows
    # 1,369,883 for x2 including its 24 MeanShift parameters, which we keep as buffers.
    [(2, 1_369_859), (3, 1_554_499), (4, 1_517_571)],
)
def test_edsr_baseline_param_count(scale, expected):
    net = BACKBONES.get("edsr-baseline")(scale=scale)
    assert count_params(net) == expected
    assert round(count_params(net) / 1e6, 2) == {2: 1.37, 3: 1.55, 4: 1.52}[scale]  # the README's


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_output_shape(scale):
    net = BACKBONES.get("edsr-tiny")(scale=scale)
    y = net(torch.rand(2, 3, 7, 9))
    assert y.shape == (2, 3, 7 * scale, 9 * scale)


def test_same_size_tail_is_identity_plus_residual():
    net = BACKBONES.get("edsr-tiny")(scale=1, tail="conv")
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    x = torch.rand(1, 3, 11, 13)
    assert torch.equal(net(x), x)


def test_insertion_points_and_taps():
    net = EDSR(num_feat=8, num_block=3, scale=2)
    assert net.insertion_points() == ["b00", "b01", "b02"]
    seen = []

    def insert(label, feat, taps):
        seen.append((label, list(taps)))
        assert torch.equal(taps[label], feat)
        return feat

    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(net(x, insert=insert), net(x))
    assert seen == [("b00", ["head", "b00"]), ("b01", ["head", "b00", "b01"]),
                    ("b02", ["head", "b00", "b01", "b02"])]


def test_insert_changes_output():
    net = EDSR(num_feat=8, num_block=2, scale=2)
    x = torch.rand(1, 3, 6, 6)
    y = net(x, insert=lambda label, f, t: f * 0 if label == "b01" else f)
    assert not torch.allclose(y, net(x))


@pytest.mark.parametrize(
    "kw", [dict(scale=5), dict(scale=2, tail="conv"), dict(tail="bogus", scale=1),
           dict(num_block=0)]
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        EDSR(**kw)
