"""The ``deepcens`` console command (installed by setup.py): ``deepcens predict ...``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``deepcens <subcommand>``; returns the exit status (2 on bad input)."""
    from deepcens import predict

    parser = argparse.ArgumentParser(prog="deepcens", description="deepcens: cell and nucleus instance segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    predict_parser = sub.add_parser("predict", help="predict label images with a trained model",
                                    description=predict.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_arguments(predict_parser)
    args = parser.parse_args(argv)
    if args.command == "predict":
        return predict.run_cli(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
