"""The training run's plots: PNG artifacts in a real MLflow store, a plot without data left out."""

from pathlib import Path

import matplotlib.image
from mlflow import MlflowClient

from orchestrator.tracking.plots import log_plots
from orchestrator.tracking.tracker import Tracker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_are_png_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    history = {
        "loss": [(s, 5.0 / s) for s in range(1, 80)],
        "contrastive": [(s, 4.0 / s) for s in range(1, 80)],
        "caption": [(s, 1.0 / s) for s in range(1, 80)],
        "val_t2v_recall_at_1": [(20, 3.0), (40, 7.5), (60, 6.0)],
        "val_v2t_recall_at_1": [(20, 2.0), (40, 5.0), (60, 6.5)],
    }
    final = {f"test_{d}_recall_at_{k}": float(k) for d in ("t2v", "v2t") for k in (1, 5, 10, 50)}
    final |= {f"val_{d}_recall_at_{k}": float(k) / 2 for d in ("t2v", "v2t") for k in (1, 5, 10, 50)}
    with Tracker.start(uri, "plots", "plotted") as tracker:
        logged = log_plots(tracker, history, final)
    assert logged == ["plots/recall_at_k.png", "plots/loss_curves.png", "plots/val_recall_at_1.png"]
    assert client.get_run(tracker.run_id).info.status == "FINISHED"

    listed = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
    assert listed == set(logged)
    out = Path(client.download_artifacts(tracker.run_id, "plots", str(tmp_path)))
    for name in logged:
        assert (out.parent / name).read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(out / "recall_at_k.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400

    # Missing series are skipped rather than drawn empty.
    with Tracker.start(uri, "plots", "partial") as partial:
        assert log_plots(partial, {"train_loss": [(1, 1.0), (2, 0.5)]}, {}) == ["plots/loss_curves.png"]
