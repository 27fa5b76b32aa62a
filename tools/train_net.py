#!/usr/bin/env python
"""Train and evaluate any deepcens method (R-CNN or U-Net) with detectron2's launcher.

    tools/train_net.py --config-file configs/evican_cell_nucleus.yaml --num-gpus 4
    tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    tools/train_net.py --config-file CFG --num-machines 2 --machine-rank 0 --dist-url tcp://HOST:PORT

With no GPU, ``--num-gpus N`` starts N CPU processes on gloo.
"""
from __future__ import annotations

import logging
import os
import sys

import deepcens  # noqa: F401  (first: keeps third-party import notes off the console, registers builders)
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from deepcens.engine.checkpoint import DeepcensCheckpointer
from deepcens.engine.launch_utils import dist_timeout_from_args, launch_reporting_errors
from deepcens.engine.outputs import finish_run
from deepcens.engine.progress import ProgressBarHook
from deepcens.engine.setup import load_config, prepare_datasets, quiet_console
from deepcens.engine.trainer import Trainer
from deepcens.errors import exit_2_on_input_error

logger = logging.getLogger("deepcens")


def setup(args):
    """Config from file + options, logging, dataset registration (and synthetic data on first use)."""
    cfg = load_config(args.config_file, args.opts)
    rank = comm.get_rank()
    # the same (cached) loggers default_setup builds, made quiet before it logs the full config
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="deepcens")
    if cfg.RUN.CONSOLE == "progress":
        quiet_console()
    default_setup(cfg, args)
    prepare_datasets(cfg)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DeepcensCheckpointer(model, cfg.OUTPUT_DIR, allow_unsafe=cfg.RUN.ALLOW_UNSAFE_CHECKPOINTS).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        if cfg.RUN.CONSOLE == "progress":
            trainer.register_hooks([ProgressBarHook(cfg.SOLVER.MAX_ITER)])
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        # the end-of-training eval hook scored DATASETS.VAL when set: score the test sets too
        if (len(cfg.DATASETS.VAL) and tuple(cfg.DATASETS.VAL) != tuple(cfg.DATASETS.TEST)) or not results:
            results = Trainer.test(cfg, trainer.model)
        model = trainer.model
    summary = finish_run(cfg, model, results)
    if summary:
        print(summary, flush=True)
        print(f"outputs in {os.path.abspath(cfg.OUTPUT_DIR)}", flush=True)
    return results


@exit_2_on_input_error
def run(argv: list[str] | None = None) -> int:
    """Parse the command line and launch ``main`` on every process; returns the exit status."""
    args = default_argument_parser().parse_args(argv)
    return launch_reporting_errors(main, args.num_gpus, num_machines=args.num_machines,
                                   machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
                                   timeout=dist_timeout_from_args(args))


if __name__ == "__main__":
    sys.exit(run())
