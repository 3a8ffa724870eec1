"""The console shows the product's lines; the libraries' output, Python's or C++'s, goes to the job's log."""

import logging
import os
import sys
import time
import warnings

import pytest

from orchestrator import console


def test_library_logs_warnings_and_file_descriptor_2_go_to_the_log(tmp_path, capfd):
    with console.job_log(tmp_path / "logs") as log:
        logging.getLogger("ray.data").info("Execution plan of Dataset x")
        logging.getLogger("mlflow.store").warning("Creating initial MLflow database tables")
        warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
        os.write(2, b"[E core_worker.cc] written by C++ to descriptor 2\n")
        print("the product's line")
        print("promptswitch: error: shown", file=sys.stderr)
    out, err = capfd.readouterr()
    assert out == "the product's line\n"
    assert err == "promptswitch: error: shown\n"  # Python's stderr still reaches the terminal
    text = log.read_text()
    for line in ("Execution plan", "database tables", "deprecation", "core_worker.cc"):
        assert line in text, line
    assert log.parent == tmp_path / "logs"

    # Afterwards everything is as it was.
    logging.getLogger("ray.data").warning("after the job")
    os.write(2, b"descriptor 2 after the job\n")
    assert "after the job" in capfd.readouterr().err and "after the job" not in log.read_text()


def test_verbose_shows_the_libraries_output_as_well(tmp_path, capfd):
    with console.job_log(tmp_path, verbose=True) as log:
        warnings.warn("a library's deprecation", FutureWarning, stacklevel=1)
        os.write(2, b"[E core_worker.cc] written by C++ to descriptor 2\n")
    err = capfd.readouterr().err
    assert "a library's deprecation" in err and "core_worker.cc" in err
    assert "a library's deprecation" in log.read_text()


@pytest.mark.distributed
def test_a_workers_console_lines_are_shown_and_the_rest_logged(ray_local, tmp_path, capsys):
    @ray_local.remote
    def worker():
        print("Reporting training result 1: TrainingReport(...)")
        console.to_console("epoch 1  step 10/20")

    with console.job_log(tmp_path) as log:
        console.route_worker_output()
        ray_local.get(worker.remote())
        deadline = time.time() + 30  # Ray forwards a worker's output a moment later
        while "TrainingReport" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
    shown = capsys.readouterr().out
    assert "epoch 1  step 10/20\n" in shown and console.MARK not in shown
    assert "TrainingReport" not in shown
    assert "(worker pid=" in log.read_text()
