"""DDP's gradient all-reduce through the counting hook: the bytes sent, and 16-bit compression."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.training.grad_sync import GradSync, attach
from tests.model.test_losses import free_port


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10, bias=False))


ELEMENTS = 32 * 64 + 64 + 64 * 10  # every gradient goes through the all-reduce once


def _worker(rank, port, compression, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ddp = DistributedDataParallel(_model())
    sync = attach(ddp, compression)
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(rank))
    ddp(x).square().mean().backward()
    queue.put((rank, sync.take_bytes(), [p.grad.tolist() for p in ddp.parameters()]))
    dist.destroy_process_group()


def _run(compression):
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, compression, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _expected_grads():
    # The DDP average, computed in one process: the mean of the two ranks' gradients.
    grads = []
    for rank in range(2):
        model = _model()
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(rank))
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    return [(a + b) / 2 for a, b in zip(*grads, strict=True)]


@pytest.mark.distributed
@pytest.mark.parametrize("compression, bytes_per_element, tol", [("none", 4, 1e-6), ("bf16", 2, 1e-2)])
def test_counts_the_bytes_and_averages_the_gradients(compression, bytes_per_element, tol):
    expected = _expected_grads()
    for _, sent, grads in _run(compression):
        assert sent == ELEMENTS * bytes_per_element
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(torch.tensor(got), want, atol=tol, rtol=tol)


def test_a_model_without_ddp_gets_no_hook_and_bad_names_are_refused():
    assert attach(_model(), "bf16") is None
    with pytest.raises(ValueError, match="none, bf16, fp16"):
        GradSync("int8")
