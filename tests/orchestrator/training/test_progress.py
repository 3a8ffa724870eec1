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
