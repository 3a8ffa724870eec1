"""Train or resume Prompt Switch on Ray.

    python train.py --config configs/demo.yaml [key=value ...]
    ray submit cluster.yaml train.py -- --config configs/msrvtt-9k-b32.yaml

Joins the running cluster when there is one ($RAY_ADDRESS, or the one `ray submit` runs on) and otherwise
starts a local one bound to 127.0.0.1. The same as `promptswitch train`.
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
