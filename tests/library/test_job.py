"""`promptswitch embed` and `promptswitch search` as a user runs them: subprocesses, local Ray, MLflow."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pytest
from mlflow import MlflowClient

from library import store
from library.search import Library
from pipelines.manifest import read_manifest
from tests.library.test_embed import _checkpoint

PROMPTSWITCH = [sys.executable, "-m", "orchestrator.cli"]


def _run(*args, cwd):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [*PROMPTSWITCH, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_a_bad_option_is_refused_before_ray_starts(tmp_path):
    done = _run(
        "embed", "--model", "x", "--manifest", "m.parquet", "--out", "lib", "dtype=int8", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "dtype='int8' is invalid; allowed: float32, float16" in done.stderr
    assert "Ray:" not in done.stdout


@pytest.mark.slow
def test_embed_search_and_eval_from_the_command_line_agree_on_recall(ray_local, trained, tmp_path):
    run, ckpt = trained
    lib = tmp_path / "lib"
    # The commands join the session's cluster, as on a cluster, rather than each starting one of its own.
    address = ("--address", ray_local.get_runtime_context().gcs_address)
    done = _run("embed", "--model", str(ckpt), "--manifest", run.data.manifest, "--out", str(lib), "--split",
                "test", *address, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"library {lib}: 18 videos, 18 rows, 0 bad" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (job,) = client.search_runs([client.get_experiment_by_name("promptswitch-library").experiment_id])
    assert job.info.status == "FINISHED" and job.data.metrics["videos"] == 18
    assert job.data.tags["promptswitch.model_source"] == str(ckpt)
    artifacts = {a.path for a in client.list_artifacts(job.info.run_id)}
    assert artifacts >= {"library_manifest.json", "bad_videos.json"}

    # The three ways to read hits: a table, JSON lines, and videos like a video.
    table = _run("search", str(lib), "a red circle moves left, then up", "-k", "3", cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "time", "(s)", "video", "id", "path"] and len(lines) == 4
    hits = _run("search", str(lib), "a red circle moves left, then up", "-k", "3", "--json", cwd=tmp_path)
    records = [json.loads(line) for line in hits.stdout.splitlines()]
    assert [r["rank"] for r in records] == [1, 2, 3] and records[0]["video_id"] == lines[1].split()[3]
    assert records[0]["score"] >= records[1]["score"] >= records[2]["score"]
    like = _run("search", str(lib), "--like", records[0]["video_path"], "--json", cwd=tmp_path)
    assert json.loads(like.stdout.splitlines()[0])["video_path"] == records[0]["video_path"]

    scored = _run("eval", "--config", str(ckpt / "config.yaml"), "--checkpoint", str(ckpt), "--split", "test",
                  *address, cwd=tmp_path)  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    evaluated = json.loads(scored.stdout[scored.stdout.index("{") :])
    assert evaluated["videos_missing"] == 0
    assert evaluated["t2v_recall_at_1"] > 100 / 18 and evaluated["t2v_recall_at_5"] < 100  # trained, not done

    captions = read_manifest(run.data.manifest)
    captions = captions.filter(pc.equal(captions["split"], "test"))
    hits = Library.open(lib).search(captions["caption"].to_pylist(), k=10)
    ranks = np.array(
        [next((h.rank for h in per if h.video_path == path), 11)
         for per, path in zip(hits, captions["video_path"].to_pylist(), strict=True)]
    )  # fmt: skip
    for k in (1, 5, 10):
        assert 100 * np.mean(ranks <= k) == pytest.approx(evaluated[f"t2v_recall_at_{k}"], abs=1e-9), k


@pytest.mark.slow
def test_a_killed_job_resumes_without_redoing_its_finished_shards(ray_local, synth, tmp_path):
    _checkpoint(tmp_path / "ckpt", synth)
    lib = tmp_path / "lib"
    address = ray_local.get_runtime_context().gcs_address  # the job joins this cluster, which outlives it
    args = ["embed", "--model", str(tmp_path / "ckpt"), "--manifest", str(synth), "--out", str(lib),
            "--address", address, "batch_size=1", "shard_rows=1"]  # fmt: skip
    job = subprocess.Popen(
        [*PROMPTSWITCH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while not store.shard_paths(lib) and time.time() < deadline:
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished = {p: p.stat().st_mtime_ns for p in store.shard_paths(lib)}
    assert 1 <= len(finished) < 24

    again = _run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = store.read_manifest(lib)
    assert manifest["counts"]["videos"] == 24 and manifest["counts"]["rows"] == 24
    assert manifest["counts"]["embedded_now"] == 24 - len(finished)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in finished.items())  # never rewritten
    assert len(store.read_rows(lib)) == 24  # no video twice
