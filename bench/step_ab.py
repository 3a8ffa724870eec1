"""The training step of this working tree against the same step at a git revision, timed in one run.

A change to the hot loop (the model's forward, the losses, the optimiser step) must not make the step slower
where the GPU paths do not apply. Each side runs in its own process, importing its own tree (the revision
is checked out into a temporary worktree): `forward_losses`, `Optimisation.backward` and `.step` on the same
seeded batches of the tiny model, as the training loop runs them on a CPU, including the read of the loss
parts. Rounds alternate the order (A, B; B, A; ...) so that outside load hits both alike; the ratio of
the medians is printed.

    .venv/bin/python bench/step_ab.py --baseline HEAD~1 [--rounds 5] [--steps 30] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run inside each tree: the step as recipe.py runs it on a CPU. Old trees read each loss part with
# .item() per step, new ones keep them on the device; both are read once per step here, as a logging
# step every step would, so the comparison is of the step itself.
STEP = r"""
import json, sys, time, torch
from model import create_model, tokenize
from orchestrator.config import TrainConfig
from orchestrator.training.step import autocast_for, build_optimisation, forward_losses
steps, batch_size, threads = map(int, sys.argv[1:4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = create_model("tiny", frames_per_group=6)
opt = build_optimisation(model, TrainConfig(clip_lr=1e-4, new_lr=1e-3), steps + 5)
g = torch.Generator().manual_seed(1)
captions = [f"a red circle moves left, then up {i}" for i in range(batch_size)]
batches = [{"frames": torch.randint(0, 256, (batch_size, 6, 3, 64, 64), dtype=torch.uint8, generator=g),
            "tokens": tokenize(captions), "video_index": torch.arange(batch_size)} for _ in range(4)]
cpu = torch.device("cpu")
autocast = autocast_for("fp32", cpu)
times = []
for i in range(steps + 5):
    start = time.perf_counter()
    losses = forward_losses(model, batches[i % 4], cpu, autocast)
    opt.backward(losses["loss"])
    opt.step(model, 1.0)
    [v.item() for v in losses.values()]
    if i >= 5:
        times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def run(tree: Path, steps: int, batch_size: int, threads: int) -> float:
    """Median seconds per step of the tree at `tree`, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", STEP, str(steps), str(batch_size), str(threads)],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="a git revision, e.g. HEAD~1 or main")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run, after 5 untimed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            sides = {"this tree": ROOT, f"baseline {args.baseline}": base}
            medians = {name: [] for name in sides}
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    medians[name].append(run(sides[name], args.steps, args.batch_size, args.threads))
                print(f"round {r + 1}: " + ", ".join(f"{n} {1000 * medians[n][-1]:.1f} ms" for n in order))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    new, old = (statistics.median(v) for v in medians.values())
    print(f"\nmedian step: this tree {1000 * new:.1f} ms, baseline {1000 * old:.1f} ms")
    print(f"steps/s ratio, this tree / baseline: {old / new:.3f} (above 1: faster)")


if __name__ == "__main__":
    main()
