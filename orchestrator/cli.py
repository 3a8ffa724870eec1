"""The `promptswitch` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="promptswitch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the tiny model on synthetic videos in one process")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--seed", type=int, default=24)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from orchestrator import quickstart

        quickstart.run(steps=args.steps, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
