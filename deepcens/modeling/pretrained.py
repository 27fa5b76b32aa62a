"""Published pretrained weights -> deepcens checkpoints for ``MODEL.WEIGHTS``.

Two layouts are converted for the model a config builds:

* ``resnest``: the ResNeSt authors' ImageNet classifiers (``resnest200-75117900.pth``, keys
  ``conv1.0.weight``, ``layer1.0.conv2.fc1.weight``, ``fc.weight``), renamed onto the trunk
  with :func:`~deepcens.modeling.backbone.resnest.resnest_key_to_deepcens`;
* ``detectron2``: detectron2-ResNeSt checkpoints, e.g. the COCO Cascade Mask R-CNN
  ``mask_cascade_rcnn_ResNeSt_200_FPN_dcn_syncBN_all_tricks_3x-e1901134.pth`` the DeepCeNS paper
  fine-tunes from; the trunk keys are renamed by the trunk's own load pre-hook, FPN / RPN /
  ROI-head keys are detectron2's.

Every source key ends up *matched* (same name and shape in the model: written out),
*shape-mismatched* (e.g. the COCO class predictors, the RPN of other anchors: left out, they
start fresh), *unexpected* (no place in the model) or *ignored* (the ImageNet classifier);
model keys the file lacks are *missing* (DCN offsets of an ImageNet trunk are expected). The
output holds the matched tensors only, as ``{"model": ...}``, loadable with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from detectron2.config import CfgNode

from deepcens.errors import DeepcensInputError

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "resnest", "detectron2")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8})\.(pth|pkl)$")


@dataclass
class ConversionReport:
    """Where each key went; see the module docstring."""

    source: str
    layout: str
    matched: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    hash_check: str = "no hash in the file name"

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        lines = [f"{self.source} ({self.layout} layout; {self.hash_check})",
                 f"  matched:          {len(self.matched)} tensors written",
                 f"  shape mismatched: {len(self.shape_mismatched)} (left out, trained from scratch){': ' + few(self.shape_mismatched) if self.shape_mismatched else ''}",
                 f"  unexpected:       {len(self.unexpected)} (no place in this model){': ' + few(self.unexpected) if self.unexpected else ''}",
                 f"  ignored:          {len(self.ignored)} (ImageNet classifier, BN counters of frozen norms)",
                 f"  missing:          {len(self.missing)} model tensors not in the file (random init){': ' + few(self.missing) if self.missing else ''}"]
        if self.expected_missing:
            lines.append(f"  expected missing: {len(self.expected_missing)} DCN offset tensors (zero init, as in training from ImageNet)")
        return "\n".join(lines)


def _read_source(path: str, allow_unsafe: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The file's state dict (``model`` / ``state_dict`` unwrapped, numpy arrays as tensors) and
    the check of the SHA-256 prefix publishers put into file names (``name-<8 hex>.pth``)."""
    from deepcens.engine.checkpoint import DeepcensCheckpointer
    from deepcens.data.download import file_sha256

    if not os.path.isfile(path):
        raise DeepcensInputError(path, "weights file not found")
    if path.endswith(".pkl"):  # detectron2 / Detectron pickles of numpy arrays
        if not allow_unsafe:
            raise DeepcensInputError(path, "pickle files need full unpickling, which can run code; "
                                           "pass --allow-unsafe only for a file you trust")
        try:
            with open(path, "rb") as handle:
                loaded = pickle.load(handle, encoding="latin1")
        except Exception as exc:  # unpickling raises many types on damaged files
            raise DeepcensInputError(path, f"cannot read pickle ({type(exc).__name__}: {exc})") from None
    else:  # weights-only torch.load; full unpickling only with allow_unsafe
        try:
            loaded = DeepcensCheckpointer(torch.nn.Module(), allow_unsafe=allow_unsafe)._torch_load(path)
        except DeepcensInputError:
            raise
        except Exception as exc:  # torch's unpickler raises struct / value errors on damaged files
            raise DeepcensInputError(path, f"cannot read weights ({type(exc).__name__}: {exc})") from None
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DeepcensInputError(path, "no state dict in the file")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise DeepcensInputError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
        tensors[key[len("module."):] if key.startswith("module.") else key] = value
    check = "no hash in the file name"
    match = _HASH_IN_NAME.search(os.path.basename(path))
    if match:
        digest = file_sha256(path)
        if not digest.startswith(match.group(1)):
            raise DeepcensInputError(path, f"SHA-256 {digest[:8]}... does not match the {match.group(1)} in the file name "
                                           "(damaged or different download)")
        check = f"SHA-256 prefix {match.group(1)} of the file name verified"
    return tensors, check


def _detect_layout(keys: list[str], path: str) -> str:
    if any(k.startswith(("layer1.", "conv1.")) for k in keys):
        return "resnest"
    if any(k.startswith("backbone.") for k in keys):
        return "detectron2"
    raise DeepcensInputError(path, "neither a resnest ImageNet state dict (layer1.*) nor a detectron2 model (backbone.*)")


def _trunk_prefix(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    from deepcens.modeling.backbone.resnest import ResNeSt

    for name, module in model.named_modules():
        if isinstance(module, ResNeSt):
            return name + "." if name else "", module
    raise DeepcensInputError(None, "the config's model has no ResNeSt trunk (MODEL.BACKBONE.NAME build_resnest_*)")


def convert_state_dict(model: torch.nn.Module, source: dict[str, torch.Tensor], layout: str,
                       name: str = "weights") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename ``source`` onto ``model``'s keys; returns the matched tensors and the report."""
    from deepcens.modeling.backbone.resnest import _rename_detectron2_resnest_keys, resnest_key_to_deepcens

    if layout == "auto":
        layout = _detect_layout(list(source), name)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    report = ConversionReport(source=name, layout=layout)
    prefix, trunk = _trunk_prefix(model)
    renamed: dict[str, torch.Tensor] = {}
    if layout == "resnest":
        for key, value in source.items():
            new = resnest_key_to_deepcens(key)
            if new is None:
                report.ignored.append(key)
            else:
                renamed[prefix + new] = value
    else:
        renamed = dict(source)
        _rename_detectron2_resnest_keys(trunk, renamed, prefix)  # the trunk's own load pre-hook
    target = model.state_dict()
    matched = {}
    for key, value in renamed.items():
        if key in target:
            if tuple(target[key].shape) == tuple(value.shape):
                matched[key] = value.to(target[key].dtype)
            else:
                report.shape_mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[key].shape)}")
        elif key.endswith("num_batches_tracked"):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.matched = sorted(matched)
    for key in target:
        if key not in matched and not any(m.startswith(key + " ") for m in report.shape_mismatched):
            offset = layout == "resnest" and ".conv_offset." in key and key.startswith(prefix)
            (report.expected_missing if offset else report.missing).append(key)
    if not matched:
        raise DeepcensInputError(name, f"no tensor of the file fits this model ({layout} layout; wrong DEPTH or file?)")
    return matched, report


def convert_pretrained(cfg: CfgNode, source: str, output: str, layout: str = "auto",
                       allow_unsafe: bool = False) -> ConversionReport:
    """Build the model of ``cfg`` (on the CPU, no weights loaded), convert ``source`` onto it and
    write ``{"model": matched tensors}`` to ``output`` atomically; returns the report."""
    from detectron2.modeling import build_model

    from deepcens.utils.atomic import atomic_write

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNEST.PRETRAINED = ""
    model = build_model(cfg)
    state, check = _read_source(source, allow_unsafe)
    matched, report = convert_state_dict(model, state, layout, name=source)
    report.hash_check = check
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with atomic_write(output, "wb") as handle:
        torch.save({"model": matched}, handle)
    logger.info(report.summary())
    return report


# ---- command line ----------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """The ``convert-pretrained`` options."""
    import argparse

    parser.add_argument("--config-file", required=True, help="config whose model receives the weights")
    parser.add_argument("--source", required=True, help="resnest ImageNet or detectron2-ResNeSt checkpoint (.pth/.pkl)")
    parser.add_argument("--output", required=True, help="deepcens checkpoint to write (use it as MODEL.WEIGHTS)")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="key layout of --source (default: detect)")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="allow files that need full unpickling (.pkl, some .pth); only for files you trust")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.ROI_HEADS.NUM_CLASSES 1")


def run(args) -> int:
    """Convert with parsed arguments, print the key report; returns the exit status."""
    from deepcens.engine.setup import load_config
    from deepcens.errors import exit_2_on_input_error

    @exit_2_on_input_error
    def convert() -> int:
        cfg = load_config(args.config_file, args.opts)
        report = convert_pretrained(cfg, args.source, args.output, args.layout, args.allow_unsafe)
        print(report.summary())
        print(f"written: {args.output} (use: MODEL.WEIGHTS {args.output})")
        return 0

    return convert()


def main(argv: list[str] | None = None) -> int:
    """``tools/convert_pretrained.py`` entry point."""
    import argparse

    parser = argparse.ArgumentParser(prog="convert_pretrained.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
