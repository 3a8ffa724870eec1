"""Train or resume Prompt Switch on Ray.

    python train.py --config configs/demo.yaml [key=value ...]
    python train.py --sweep configs/sweep-demo.yaml [--name NAME] [--samples N]
    ray submit cluster.yaml train.py -- --config configs/msrvtt-9k-b32.yaml
    ray submit cluster.yaml train.py -- --sweep configs/sweep-demo.yaml

Joins the running cluster when there is one ($RAY_ADDRESS, or the one `ray submit` runs on) and otherwise
starts a local one bound to 127.0.0.1. The same as `promptswitch train` (with --sweep: `promptswitch tune`).
"""

import sys

from orchestrator.cli import main


def command(argv: list[str]) -> list[str]:
    """`promptswitch` arguments: with `--sweep PATH` it is `tune --config PATH ...`, otherwise `train ...`."""
    for i, arg in enumerate(argv):
        if arg == "--sweep" and i + 1 < len(argv):
            return ["tune", "--config", argv[i + 1], *argv[:i], *argv[i + 2 :]]
        if arg.startswith("--sweep="):
            return ["tune", "--config", arg.partition("=")[2], *argv[:i], *argv[i + 1 :]]
    return ["train", *argv]


if __name__ == "__main__":
    raise SystemExit(main(command(sys.argv[1:])))
