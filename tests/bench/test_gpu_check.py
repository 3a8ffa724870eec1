"""bench/gpu_check.py: its smoke mode end to end on the CPU, exit codes and missing-package message."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = {"agreement", "checkpoint", "throughput", "data"}


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_package_is_named_with_the_install_commands_in_order(gpu_check, capsys):
    assert gpu_check.check_requirements(third_party=["json", "no_such_package_xyz"], project=["model"]) == 3
    err = capsys.readouterr().err
    assert "no_such_package_xyz" in err
    assert "  json " not in err  # only what is missing is listed
    torch_pair = err.index("pip install torch==2.14.1 torchvision==0.29.1")
    assert torch_pair < err.index("pip install -e .")  # the Makefile's order


def test_a_project_module_that_does_not_import_is_named(gpu_check, capsys):
    assert gpu_check.check_requirements(third_party=["json"], project=["model.no_such_module"]) == 3
    assert "model.no_such_module" in capsys.readouterr().err
    project = ["model", "orchestrator.training.step"]
    assert gpu_check.check_requirements(third_party=["json"], project=project) == 0


def test_known_cards_have_a_peak_and_others_need_the_argument(gpu_check):
    peaks = {
        "NVIDIA H100 80GB HBM3": 989e12,
        "NVIDIA H100 PCIe": 756e12,
        "NVIDIA H200": 989e12,
        "NVIDIA A100-SXM4-80GB": 312e12,
        "NVIDIA A100 80GB PCIe": 312e12,
        "NVIDIA A10G": 125e12,
        "NVIDIA L4": 121e12,
        "NVIDIA H100 NVL": None,  # other clocks: not guessed
        "NVIDIA L40S": None,
        "Tesla T4": None,
    }
    assert {name: gpu_check.peak_for_name(name)[0] for name in peaks} == peaks
    assert "approximate" in gpu_check.peak_for_name("NVIDIA A10G")[1]
    assert "--peak-tflops" in gpu_check.peak_for_name("Tesla T4")[1]


def test_out_of_memory_is_reported_and_retried_at_half_the_batch(gpu_check, monkeypatch, capsys):
    tried = []

    def measure(name, batch_size, frames, args, device, peak):
        tried.append(batch_size)
        if batch_size > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        flops = {"forward_flops": 1e9, "backward_flops": 2e9, "flops_per_step": 3e9}
        return flops | {
            "batch_size": batch_size,
            "image_size": 224,
            "samples_per_s": 10.0,
            "step_ms": 100.0,
            "achieved_tflops": 0.03,
            "mfu": 0.5,
            "peak_memory_gib": 20.0,
            "last_loss": 2.0,
        }

    monkeypatch.setattr(gpu_check, "measure_model", measure)
    args = gpu_check.parse_args(
        ["--device", "cpu", "--batch-size", "16", "--models", "ViT-B-16", "--frames", "6"]
    )
    args.precision = "bf16"
    section = gpu_check.Section("throughput")
    gpu_check.throughput(section, args, torch.device("cpu"))
    assert tried == [16, 8, 4]
    result = section.figures["ViT-B-16"]
    assert result["batch_size"] == 4 and result["out_of_memory_at"] == [16, 8]
    assert "out of GPU memory at batch 16; retrying at 8" in capsys.readouterr().out
    assert all(c["passed"] for c in section.checks)

    tried.clear()
    args.batch_size = 8  # 8, 4 fit in the fake above; below 2 nothing is tried (a contrastive batch)
    monkeypatch.setattr(gpu_check, "measure_model", lambda *a: measure(a[0], 99, *a[2:]))
    with pytest.raises(RuntimeError, match=r"does not fit at any batch size \(tried \[8, 4, 2\]\)"):
        gpu_check.throughput(gpu_check.Section("throughput"), args, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_exits_2_without_writing_a_report(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


def test_skipped_sections_are_reported_as_skipped(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    argv = ["--device", "cpu", "--smoke", "--peak-tflops", "1", "--skip", "agreement", "checkpoint", "data"]
    assert gpu_check.main([*argv, "--out", str(out)]) == 0
    sections = json.loads(out.read_text())["sections"]
    assert {k for k, v in sections.items() if v["status"] == "skipped"} == SECTIONS - {"throughput"}
    assert sections["throughput"]["status"] == "passed"


@pytest.mark.slow
def test_smoke_run_on_the_cpu_passes_every_section_with_numbers(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--peak-tflops", "1"]
    run = subprocess.run(
        [*command, "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # not the repository root: the script finds the project itself
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "ALL CHECKS PASSED" in run.stdout
    report = json.loads(out.read_text())
    assert report["passed"] and report["failed"] == [] and report["mode"] == "smoke"
    assert report["environment"]["torch"] == torch.__version__
    assert set(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "passed", name
        assert section["checks"] and all(c["passed"] for c in section["checks"]), name
        assert section["error"] is None

    agreement = report["sections"]["agreement"]["figures"]
    bf16 = agreement["tiny | cpu bf16 autocast"]
    assert 0.99 <= bf16["video_min_cosine"] <= 1.0 + 1e-6 and bf16["loss_max_rel_diff"] >= 0
    assert set(bf16["losses"]) == {"loss", "contrastive", "caption"}
    assert agreement["tolerances"]["bf16"]["embedding_min_cosine"] == 0.99

    names = [c["name"] for c in report["sections"]["checkpoint"]["checks"]]
    assert any("optimiser state tensors on their parameter's device" in n for n in names)
    assert any("loaded weights equal the saved ones" in n for n in names)

    tiny = report["sections"]["throughput"]["figures"]["tiny"]
    assert tiny["samples_per_s"] > 0 and tiny["flops_per_step"] > 0 and 0 < tiny["mfu"] <= 1
    assert tiny["frames_per_video"] == 6  # training samples one group of frames_per_group frames
    assert tiny["flops_per_step"] == tiny["forward_flops"] + tiny["backward_flops"]

    data = report["sections"]["data"]["figures"]["result"]
    assert data["steps"] == 6 and 0 <= data["wait_fraction"] <= 1 and data["samples_per_s"] > 0
    assert all(math.isfinite(data[k]) for k in ("first_batch_wait_s", "median_step_ms"))
