"""Train and evaluate any deepcens method (R-CNN or U-Net) with detectron2's launcher.

    deepcens train --config-file configs/evican_cell_nucleus.yaml --num-gpus 4
    deepcens train --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    deepcens train --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT

With no GPU, ``--num-gpus N`` starts N CPU processes on gloo. ``tools/train_net.py`` runs the
same code. Before anything is launched the run is checked (config valid, OUTPUT_DIR writable,
weights loadable for ``--eval-only``, what ``--resume`` will resume from), so a run that
cannot succeed fails in seconds with one ``error:`` line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from deepcens.engine.checkpoint import DeepcensCheckpointer
from deepcens.engine.epochs import apply_epoch_schedule
from deepcens.engine.launch_utils import dist_timeout, launch_reporting_errors
from deepcens.engine.outputs import finish_run
from deepcens.engine.progress import ProgressBarHook
from deepcens.engine.setup import load_config, prepare_datasets, quiet_console
from deepcens.engine.trainer import Trainer
from deepcens.errors import DeepcensInputError
from deepcens.utils.atomic import check_output_folder

logger = logging.getLogger("deepcens")

ALLOW_RANDOM_OPTION = "--allow-random-weights"


class _NoInputErrorTraceback(logging.Filter):
    """Drops log records carrying a ``DeepcensInputError`` traceback (detectron2's trainer logs
    "Exception during training:" with the whole traceback); the tool prints the one-line error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeepcensInputError))


def keep_input_error_tracebacks_off_the_console() -> None:
    """Add :class:`_NoInputErrorTraceback` to the console handlers (log.txt keeps the traceback)."""
    for name in ("detectron2", "d2", "deepcens", "fvcore"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and not any(
                    isinstance(f, _NoInputErrorTraceback) for f in handler.filters):
                handler.addFilter(_NoInputErrorTraceback())


def setup(args: argparse.Namespace):
    """Config from file + options, logging, dataset registration (and synthetic data on first use)."""
    cfg = load_config(args.config_file, args.opts)
    rank = comm.get_rank()
    # the same (cached) loggers default_setup builds, made quiet before it logs the full config
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="deepcens")
    keep_input_error_tracebacks_off_the_console()
    if cfg.RUN.CONSOLE == "progress":
        quiet_console()
    default_setup(cfg, args)
    prepare_datasets(cfg)
    return apply_epoch_schedule(cfg)


def main(args: argparse.Namespace):
    """The per-process body ``launch`` runs: train (then test), or ``--eval-only`` test."""
    from deepcens.engine.weights import load_inference_weights

    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        if args.resume and DeepcensCheckpointer(model, cfg.OUTPUT_DIR).has_checkpoint():
            DeepcensCheckpointer(model, cfg.OUTPUT_DIR, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=True)
        else:
            load_inference_weights(model, cfg.MODEL.WEIGHTS, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS,
                                   allow_random=args.allow_random_weights,
                                   option=ALLOW_RANDOM_OPTION)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        if cfg.RUN.CONSOLE == "progress":
            trainer.register_hooks([ProgressBarHook(cfg.SOLVER.MAX_ITER)])
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        # detectron2's eval hook scores the final model after training: DATASETS.VAL, or DATASETS.TEST
        # when there is no VAL (Trainer.build_hooks). Reuse that instead of evaluating twice. The
        # iteration is the same on every rank, so every rank takes the same branch (evaluation is
        # collective).
        scored_final = getattr(trainer, "_last_eval_iter", None) == trainer.iter
        if scored_final and (tuple(cfg.DATASETS.VAL) or tuple(cfg.DATASETS.TEST)) == tuple(cfg.DATASETS.TEST):
            results = trainer._last_eval_results
        else:
            results = Trainer.test(cfg, trainer.model)
        model = trainer.model
    summary = finish_run(cfg, results, model)
    if summary:
        print(summary, flush=True)
        print(f"outputs in {os.path.abspath(cfg.OUTPUT_DIR)}", flush=True)
    return results


def preflight(args: argparse.Namespace):
    """Check what can be checked before launching; returns the loaded config.

    Refuses a config that does not load, an OUTPUT_DIR that is a file or not writable,
    ``--eval-only`` without weights (unless ``--allow-random-weights``), and ``--resume``
    with a ``last_checkpoint`` naming a file that is gone; says on the console when
    ``--resume`` finds nothing to resume (training then starts from MODEL.WEIGHTS).
    """
    cfg = load_config(args.config_file, args.opts)
    check_output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    if args.resume:
        tag = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
        if os.path.isfile(tag):
            with open(tag, encoding="utf-8", errors="replace") as handle:
                named = handle.read().strip()
            target = os.path.join(cfg.OUTPUT_DIR, named)
            if not named or not os.path.isfile(target):
                raise DeepcensInputError(tag, f"names checkpoint {named!r}, which does not exist; restore it, "
                                         "or remove last_checkpoint to start from MODEL.WEIGHTS")
        else:
            print(f"note: --resume found no checkpoint in {os.path.abspath(cfg.OUTPUT_DIR)}: "
                  f"{'evaluating MODEL.WEIGHTS' if args.eval_only else 'training starts from MODEL.WEIGHTS'} "
                  f"({cfg.MODEL.WEIGHTS or 'random initialisation'})", file=sys.stderr, flush=True)
            if args.eval_only:
                args.resume = False
    if args.eval_only and not args.resume and not cfg.MODEL.WEIGHTS and not args.allow_random_weights:
        raise DeepcensInputError(args.config_file, "--eval-only needs trained weights: give MODEL.WEIGHTS "
                                 f"(or --resume in a trained OUTPUT_DIR, or {ALLOW_RANDOM_OPTION})")
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """detectron2's ``default_argument_parser`` options (the same set as ``tools/train_net.py``)."""
    for action in default_argument_parser()._actions:  # detectron2 keeps its options in one parser
        if not isinstance(action, argparse._HelpAction):
            parser._add_action(action)
    add_deepcens_arguments(parser)


def add_deepcens_arguments(parser: argparse.ArgumentParser) -> None:
    """The options deepcens adds to detectron2's training command line."""
    parser.add_argument(ALLOW_RANDOM_OPTION, action="store_true",
                        help="--eval-only: allow parameters the checkpoint leaves uninitialised (or no weights)")


def run(args: argparse.Namespace) -> int:
    """Check the run, then ``launch`` :func:`main` on every process; returns the exit status."""
    cfg = preflight(args)
    return launch_reporting_errors(main, args.num_gpus, num_machines=args.num_machines,
                                   machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
                                   timeout=dist_timeout(cfg))
