"""``SOLVER.AMP`` is honoured by every training loop: forward passes run under autocast.

On the CPU the loops autocast in bfloat16; float16 there is refused with one clear error, and
a registered loop that ignores ``SOLVER.AMP`` is refused instead of training in fp32 silently.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

import deepcens  # noqa: F401  (registrations)
from deepcens.config import add_deepcens_config
from deepcens.engine.loops import TRAIN_LOOP_REGISTRY, Single, TrainLoop, build_train_loop
from deepcens.engine.schemes import Acc

sys.path.insert(0, os.path.dirname(__file__))
import reliability_tiny  # noqa: E402


class AutocastProbe(nn.Module):
    """loss = (w . x)^2; records the CPU autocast state and the dtype of its matmul at every forward."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, batch):
        product = batch @ self.w
        self.seen.append((torch.is_autocast_enabled("cpu"), product.dtype))
        return {"loss_sq": (product.float() ** 2).sum()}


def repeat(batch):
    while True:
        yield batch


def _cfg(scheme: str, amp: bool, precision: str = "bfloat16"):
    cfg = get_cfg()
    add_deepcens_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ("a", "b")
    cfg.SOLVER.TRAIN_SCHEME = scheme
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.SOLVER.AMP.PRECISION = precision
    return cfg


def _loop(scheme: str, amp: bool, precision: str = "bfloat16"):
    model = AutocastProbe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loop = build_train_loop(_cfg(scheme, amp, precision), model, optimizer,
                            lambda cfg, names: repeat(torch.tensor([[1.0, 2.0]])))
    return loop, model


@pytest.mark.parametrize("scheme", ["Single", "Acc", "Fix"])
def test_loops_forward_under_bf16_autocast_when_amp_is_enabled(scheme):
    loop, model = _loop(scheme, amp=True)
    loop.train(0, 2)
    expected_forwards = 4 if scheme == "Acc" else 2  # Acc: one minibatch per dataset per step
    assert model.seen == [(True, torch.bfloat16)] * expected_forwards
    assert model.w.grad is not None and model.w.grad.dtype == torch.float32  # weights stay fp32


@pytest.mark.parametrize("scheme", ["Single", "Acc"])
def test_loops_run_in_full_precision_when_amp_is_off(scheme):
    loop, model = _loop(scheme, amp=False)
    loop.train(0, 1)
    assert model.seen and all(state == (False, torch.float32) for state in model.seen)


def test_float16_on_cpu_is_a_clear_error_not_a_silent_fp32_run():
    with pytest.raises(ValueError, match="needs SOLVER.AMP.PRECISION bfloat16"):
        _loop("Single", amp=True, precision="float16")
    with pytest.raises(ValueError, match="must be one of"):
        _loop("Acc", amp=True, precision="fp8")


def test_a_loop_that_ignores_amp_is_refused(monkeypatch):
    class IgnoresAmp(TrainLoop):
        @classmethod
        def from_config(cls, cfg, model, optimizer, build_loader):
            return cls(model, build_loader(cfg, cfg.DATASETS.TRAIN), optimizer)  # no precision passed

    monkeypatch.setitem(TRAIN_LOOP_REGISTRY._obj_map, "IgnoresAmp", IgnoresAmp)
    with pytest.raises(ValueError, match="does not honour SOLVER.AMP"):
        _loop("IgnoresAmp", amp=True)
    loop, _ = _loop("IgnoresAmp", amp=False)  # fine without AMP
    assert loop.precision is None


def test_trainer_builds_its_loop_with_amp_and_steps_a_mask_rcnn_in_bf16(tmp_path):
    """The real Trainer (tiny Mask R-CNN): the loop it builds autocasts; a step gives finite losses."""
    from detectron2.utils.env import seed_all_rng

    from deepcens.engine.trainer import Trainer

    out = str(tmp_path / "run")
    reliability_tiny.register_tiny(str(tmp_path / "tiny_data"))
    cfg = reliability_tiny.tiny_cfg(out, ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16",
                                          "SOLVER.MAX_ITER", "1"])
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is Single and trainer._trainer.precision is torch.bfloat16
    seen = []
    forward = trainer._trainer.model.forward

    def recording_forward(batched_inputs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(batched_inputs)

    trainer._trainer.model.forward = recording_forward
    trainer.train()
    assert seen == [True]
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))


def test_acc_under_amp_sums_gradients_like_fp32():
    """bf16 autocast changes rounding, not the Acc rule: one optimizer step with the summed gradient."""
    model = AutocastProbe()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, -1.0]])]
    loop = Acc(model, [repeat(b) for b in batches], optimizer, max_iter=1, precision=torch.bfloat16)
    loop.train(0, 1)
    expected = sum(2 * (b @ torch.tensor([1.0, -2.0])) * b[0] for b in batches)
    assert torch.allclose(model.w.grad, expected.reshape(-1), rtol=1e-2)


def test_deformable_convolution_runs_under_cpu_bf16_autocast():
    """torchvision's CPU deform_conv2d has no bfloat16 kernel: the layer runs it in float32."""
    from deepcens.modeling.backbone.deform import SelfOffsetDeformConv2d

    torch.manual_seed(0)
    layer = SelfOffsetDeformConv2d(4, 4, 3, padding=1, modulated=True)
    x = torch.randn(1, 4, 8, 8)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert torch.allclose(out.float(), reference, atol=5e-2) and layer.weight.grad is not None
