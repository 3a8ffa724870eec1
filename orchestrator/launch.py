"""What TorchTrainer is handed: a function whose module imports nothing heavy.

Ray Train's controller unpickles the training function, importing its module; keeping torch, MLflow and the
model out of that import keeps the controller a small process (about 0.5 GB less on the demo).
"""


def train_loop(loop_config: dict) -> None:
    from orchestrator.train_loop import train_loop_per_worker

    train_loop_per_worker(loop_config)
