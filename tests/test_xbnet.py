"""XB-Net and generalized U-Net networks (shapes, parameter counts) and the XB-Net losses."""
from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg

from deepcens.config import add_deepcens_config
from deepcens.modeling.dense import DENSE_NETWORK_REGISTRY, build_dense_network
from deepcens.modeling.dense.blocks import num_parameters
from deepcens.modeling.dense.vgg_unet import UNet
from deepcens.modeling.dense.xbnet import XBNet
from deepcens.modeling.losses import DENSE_LOSS_REGISTRY, build_dense_loss, j_regularization, j_statistics


def _cfg(**dense):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    for key, value in dense.items():
        cfg.MODEL.DENSE[key] = value
    return cfg


def test_xbnet_parameter_count_matches_paper():
    """The paper gives 11.38 M parameters (ptflops); ours: 11,375,171 (0.04% below: the image-pooling
    ASPP pathway has no GroupNorm here, 512 affine parameters fewer than the authors' code)."""
    count = num_parameters(build_dense_network(_cfg()))
    assert count == pytest.approx(11.38e6, rel=0.001)


def test_xbnet_output_shape_and_registered_names():
    assert {"XBNet", "UNet"} <= set(DENSE_NETWORK_REGISTRY._obj_map)
    net = XBNet(in_channels=1, num_outputs=3, base_channels=8)
    assert net.size_divisibility == 16
    out = net(torch.rand(2, 1, 48, 32))
    assert out.shape == (2, 3, 48, 32)
    two_channel = XBNet(in_channels=2, num_outputs=4, base_channels=8, num_stages=2, aspp=False)
    assert two_channel(torch.rand(1, 2, 12, 20)).shape == (1, 4, 12, 20)


def test_unet_ablation_parameter_counts_match_paper_differences():
    """Paper Fig. 7: Base 12.19 M, Pixelshuffle 7.84 M, Aspp adds 17.8 M. Those ptflops figures
    cover the decoder and bottleneck of the 64..1024-channel U-Net (its VGG encoder, 18.85 M,
    is not in them): our decoder + bottleneck counts equal them exactly; BN and GN variants
    have the same count, as the paper says."""
    base = UNet()
    decoder = num_parameters(base) - num_parameters(base.encoder)
    assert decoder == pytest.approx(12.19e6, abs=0.005e6)
    shuffle = UNet(upsample="pixelshuffle")
    assert num_parameters(shuffle) - num_parameters(shuffle.encoder) == pytest.approx(7.84e6, abs=0.005e6)
    assert num_parameters(UNet(aspp=True)) - num_parameters(base) == pytest.approx(17.8e6, abs=0.05e6)
    assert num_parameters(UNet(norm="GN")) == num_parameters(base)
    assert num_parameters(UNet(downsample="conv")) > num_parameters(base)


@pytest.mark.parametrize("options", [
    dict(), dict(depth=4), dict(downsample="conv"), dict(upsample="pixelshuffle"), dict(aspp=True),
    dict(norm="GN"),
])
def test_unet_switches_forward(options):
    options = {"base_channels": 8, "depth": 3, **options}
    net = UNet(in_channels=1, num_outputs=3, **options)
    size = net.size_divisibility * 2
    assert net(torch.rand(2, 1, size, size)).shape == (2, 3, size, size)


def test_unet_resnet_encoder_builds_from_config():
    cfg = _cfg(NETWORK="UNet")
    cfg.MODEL.DENSE.UNET.ENCODER = "resnet50"
    net = build_dense_network(cfg)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def test_unet_rejects_unknown_switch():
    with pytest.raises(ValueError, match="DOWNSAMPLE"):
        UNet(downsample="avgpool")


# ---- losses ------------------------------------------------------------------------------------

def _hand_example():
    """2x2 image; per-pixel probabilities (rows) and classes 0, 1, 2, 2."""
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    logits = probs.log().t().reshape(1, 3, 2, 2)
    targets = torch.tensor([[[0, 1], [2, 2]]])
    return logits, targets


def test_losses_on_hand_example():
    logits, targets = _hand_example()
    losses = build_dense_loss(_cfg())(logits, targets)
    expected_ce = (1 * -math.log(0.5) + 10 * -math.log(0.6) + 5 * -math.log(0.8) + 5 * -math.log(0.4)) / 21
    assert float(losses["loss_ce"]) == pytest.approx(expected_ce, rel=1e-5)
    # class means of p: Omega_0 (.5,.25,.25), Omega_1 (.2,.6,.2), Omega_2 (.2,.2,.6)
    # J_01 = .5-.2, J_02 = .5-.2, J_10 = .6-.25, J_12 = .6-.2, J_20 = .6-.25, J_21 = .6-.2
    j_values = [0.3, 0.3, 0.35, 0.4, 0.35, 0.4]
    expected_j = sum(-math.log((1 + j) / 2) for j in j_values) / 6
    assert float(losses["loss_jreg"]) == pytest.approx(expected_j, rel=1e-4)
    j_matrix, valid = j_statistics(torch.softmax(logits, 1), targets)
    assert float(j_matrix[1, 2]) == pytest.approx(0.4, abs=1e-6) and not bool(valid[1, 1])


def test_uniform_and_perfect_predictions():
    targets = torch.tensor([[[0, 1], [2, 2]]])
    uniform = build_dense_loss(_cfg())(torch.zeros(1, 3, 2, 2), targets)
    assert float(uniform["loss_ce"]) == pytest.approx(math.log(3), rel=1e-6)
    assert float(uniform["loss_jreg"]) == pytest.approx(math.log(2), rel=1e-4)  # J = 0 for every pair
    perfect = torch.nn.functional.one_hot(targets, 3).permute(0, 3, 1, 2).float() * 30.0
    assert float(j_regularization(perfect, targets)) < 1e-4


def test_ignored_pixels_do_not_count_and_cross_entropy_loss_has_no_jreg():
    logits, targets = _hand_example()
    padded_logits = torch.cat([logits, torch.randn(1, 3, 2, 1)], dim=3)
    padded_targets = torch.cat([targets, torch.full((1, 2, 1), 255)], dim=2)
    loss = build_dense_loss(_cfg())
    a, b = loss(logits, targets), loss(padded_logits, padded_targets)
    for key in ("loss_ce", "loss_jreg"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6)
    all_ignored = loss(logits, torch.full_like(targets, 255))
    assert float(sum(all_ignored.values())) == 0.0
    assert set(DENSE_LOSS_REGISTRY.get("cross_entropy")(_cfg())(logits, targets)) == {"loss_ce"}


def test_j_regularization_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 3, (2, 4, 5))
    targets[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda x: j_regularization(x, targets, eps=0.0), (logits,))
    # a gradient step on the J term alone separates the classes better
    before = j_regularization(logits, targets)
    before.backward()
    stepped = (logits - 0.5 * logits.grad).detach()
    assert float(j_regularization(stepped, targets)) < float(before.detach())
    # and it raises the logit of the true class on (rare) class-1 pixels
    mask = targets == 1
    true_grad = logits.grad.permute(0, 2, 3, 1)[mask][:, 1]
    assert bool((true_grad < 0).all())


@pytest.mark.parametrize("encoder, total, encoder_only", [
    ("xception", 37_861_635, 14_350_472),
    ("densenet201", 50_054_659, 18_086_656),
    ("resden", 44_787_715, 32_597_120),
])
def test_backbone_ablation_encoders_build_with_pinned_counts(encoder, total, encoder_only):
    """Paper Sec. 4.3 encoders (Xception with 4 middle-flow blocks, DenseNet-201, ResDen): pinned
    parameter counts, full-resolution output, bridges at every decoder stage's size."""
    net = UNet(encoder=encoder)
    assert num_parameters(net) == total
    assert num_parameters(net.encoder) == encoder_only
    assert net.size_divisibility == 16
    skips, bottleneck = net.encoder(torch.rand(2, 1, 32, 48))
    assert [tuple(s.shape[-2:]) for s in skips] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert [s.shape[1] for s in skips] == net.encoder.skip_channels
    assert bottleneck.shape[1:] == (net.encoder.out_channels, 2, 3)
    assert net(torch.rand(2, 1, 32, 48)).shape == (2, 3, 32, 48)


def test_backbone_encoder_norm_is_configurable():
    net = UNet(encoder="densenet201", norm="GN")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.encoder.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.encoder.modules())


def test_xbnet_authors_aspp_pool_norm_option():
    """The authors' code normalises the image-pooling pathway: 512 parameters more (11,375,683)."""
    assert num_parameters(build_dense_network(_cfg())) == 11_375_171
    cfg = _cfg()
    cfg.MODEL.DENSE.XBNET.ASPP_POOL_NORM = True
    assert num_parameters(build_dense_network(cfg)) == 11_375_683


def test_adamw_amsgrad_option():
    from deepcens.engine.trainer import Trainer

    cfg = _cfg()
    cfg.SOLVER.OPTIMIZER = "AdamW"
    model = torch.nn.Linear(2, 2)
    assert Trainer.build_optimizer(cfg, model).defaults["amsgrad"] is False
    cfg.SOLVER.AMSGRAD = True
    assert Trainer.build_optimizer(cfg, model).defaults["amsgrad"] is True
