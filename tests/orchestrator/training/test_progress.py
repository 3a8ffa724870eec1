"""Rank 0's console lines: the loss parts, speed and data wait of each window, and an honest ETA."""

from orchestrator.console import MARK
from orchestrator.training.checkpoint import TrainState
from orchestrator.training.progress import Progress


def test_the_first_window_holds_the_start_up_and_predicts_no_end(capfd):
    progress = Progress(total_steps=100, batch_size=10, label="trial-1")
    metrics = {"loss": 3.0, "loss_contrastive": 2.0, "loss_caption": 2.0, "data_wait_fraction": 0.25}
    progress.show_step(TrainState(step=10), metrics | {"samples_per_second": 1.0})  # start-up: slow
    progress.show_step(TrainState(step=20), metrics | {"samples_per_second": 20.0})
    first, second = capfd.readouterr().out.splitlines()
    assert first == (
        f"{MARK}trial-1  epoch 1  step 10/100  loss 3.000 (contrastive 2.000  caption 2.000)  "
        "1.0 samples/s  data wait 25%  ETA ?"
    )
    assert second.endswith("20.0 samples/s  data wait 25%  ETA 0m40s")  # 80 steps x 10 / 20 per second


def test_the_eta_follows_the_mean_pace_so_one_slow_window_does_not_swing_it(capfd):
    progress = Progress(total_steps=100, batch_size=10)
    metrics = {"loss": 3.0, "data_wait_fraction": 0.0}
    for step, speed in [(10, 1.0), (20, 20.0), (30, 5.0), (40, 20.0), (100, 20.0)]:
        progress.show_step(TrainState(step=step), metrics | {"samples_per_second": speed})
    etas = [line.rsplit("ETA ", 1)[1] for line in capfd.readouterr().out.splitlines()]
    # 5 s for steps 11-20, then an epoch's start: 20 s for steps 21-30; 70 steps left at 25 s per 20 steps.
    assert etas == ["?", "0m40s", "1m27s", "1m00s", "0m00s"]  # at step 40: 60 left, 30 s per 30 steps
