"""The `promptswitch` command as a user runs it: a real process, real files, a real local Ray cluster.

The commands that work on Ray run in this process against the session's cluster (`in_process`): a new
process would start a cluster of its own for each call, ten seconds apiece.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.manifest import SCHEMA, read_manifest, write_manifest
from pipelines.synth import corrupt_copies

FIXTURES = Path(__file__).parent.parent / "pipelines" / "fixtures"


def promptswitch(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def in_process(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `promptswitch args` run here, on the Ray cluster already started."""
    from orchestrator.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = promptswitch("data", "synth", "--out", out, "--videos", 10, "--seed", 7)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert Path(summary["manifest"]).is_file()
    return Path(summary["manifest"])


def test_synth_is_deterministic_by_seed(synth, tmp_path):
    again = promptswitch("data", "synth", "--out", tmp_path, "--videos", 10, "--seed", 7)
    assert again.returncode == 0, again.stderr
    a, b = read_manifest(synth), read_manifest(json.loads(again.stdout)["manifest"])
    assert a["caption"].to_pylist() == b["caption"].to_pylist()
    assert a["split"].to_pylist() == b["split"].to_pylist()


@pytest.mark.slow
def test_check_reports_bad_videos_and_its_exit_status_follows_the_limit(ray_local, synth, tmp_path, capsys):
    bad = corrupt_copies(synth.parent, ("empty", "garbage"))
    table = read_manifest(synth)
    extra = pa.table(
        {
            "video_id": list(bad),
            "video_path": [str(p) for p in bad.values()],
            "caption": ["x"] * len(bad),
            "split": ["train"] * len(bad),
        },
        schema=SCHEMA,
    )
    manifest = tmp_path / "with-bad.parquet"
    write_manifest(pa.concat_tables([table, extra]), manifest)

    code, out, err = in_process(capsys, "data", "check", manifest)
    assert code == 1
    report = json.loads(out)
    assert report["total"] == 12 and report["ok"] == 10
    assert sorted(b["video"] for b in report["bad"]) == sorted(str(p) for p in bad.values())
    assert "more than --max-bad-fraction" in err

    code, _, err = in_process(capsys, "data", "check", manifest, "--max-bad-fraction", 0.5)
    assert code == 0, err


@pytest.mark.slow
def test_cache_is_built_then_reused(ray_local, synth, tmp_path, capsys):
    code, out, err = in_process(capsys, "data", "cache", synth, "--cache-dir", tmp_path / "cache", "--fps", 4)
    assert code == 0, err
    built = json.loads(out)
    assert built["reused"] is False and built["ok"] == 10 and Path(built["cache"], "index.parquet").is_file()
    code, out, _ = in_process(capsys, "data", "cache", synth, "--cache-dir", tmp_path / "cache", "--fps", 4)
    second = json.loads(out)
    assert second["reused"] is True and second["cache"] == built["cache"]


def prepare_msrvtt(videos: Path, out: Path) -> list:
    return [
        "data",
        "prepare",
        "--dataset",
        "msrvtt-9k",
        "--annotations",
        FIXTURES / "msrvtt",
        "--videos",
        videos,
        "--out",
        out,
    ]


def msrvtt_videos(folder: Path, ids) -> Path:
    folder.mkdir(exist_ok=True)
    for video_id in ids:
        (folder / f"{video_id}.mp4").write_bytes(b"placeholder")
    return folder


def test_prepare_prints_the_summary_and_writes_the_manifest(tmp_path):
    ids = set()
    for listing in ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv"):
        with open(FIXTURES / "msrvtt" / listing) as f:
            ids |= {row["video_id"] for row in csv.DictReader(f)}
    videos = msrvtt_videos(tmp_path / "videos", ids)
    out = tmp_path / "msrvtt.parquet"
    result = promptswitch(*prepare_msrvtt(videos, out), "--val-fraction", 0.3)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert summary["missing_videos"] == 0
    table = read_manifest(out)
    for split, counts in summary["splits"].items():
        rows = [r for r in table.to_pylist() if r["split"] == split]
        assert counts == {"videos": len({r["video_id"] for r in rows}), "captions": len(rows)}


def test_missing_videos_fail_with_the_list_unless_allowed(tmp_path):
    videos = msrvtt_videos(tmp_path / "videos", ["video0"])
    args = prepare_msrvtt(videos, tmp_path / "m.parquet")
    failed = promptswitch(*args)
    assert failed.returncode == 2
    assert "video1.mp4" in failed.stderr and "--allow-missing" in failed.stderr
    assert "Traceback" not in failed.stderr
    allowed = promptswitch(*args, "--allow-missing")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["missing_videos"] > 0


def test_a_bad_value_is_named_before_any_work(synth, tmp_path):
    result = promptswitch("data", "cache", synth, "--short-side", 8, cwd=tmp_path)  # no model reads 8 px
    assert result.returncode == 2
    assert "data.cache_short_side=8" in result.stderr and "allowed: an integer >= 16" in result.stderr


def test_the_order_twin_world_and_its_image_pretrained_clip(tmp_path):
    made = promptswitch("data", "twins", "--out", tmp_path / "twins", "--pairs", 4, "--test-pairs", 1,
                        "--val-pairs", 1)  # fmt: skip
    assert made.returncode == 0, made.stderr
    rows = read_manifest(json.loads(made.stdout)["manifest"]).to_pylist()
    splits = {r["video_id"]: r["split"] for r in rows}
    assert len(splits) == 8 and sorted(splits.values()).count("test") == 2  # one whole pair

    refused = promptswitch("data", "twins", "--out", tmp_path / "no", "--pairs", 2, "--test-pairs", 1)
    assert refused.returncode == 2 and "leave none for training" in refused.stderr
    assert "Traceback" not in refused.stderr

    weights = tmp_path / "tiny-image-clip.safetensors"
    pretrained = promptswitch("pretrain-tiny", "--out", weights, "--steps", 5)
    assert pretrained.returncode == 0, pretrained.stderr
    assert weights.is_file() and "chance 1.9 %" in pretrained.stdout  # 54 things to name
