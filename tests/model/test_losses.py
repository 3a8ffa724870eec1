"""InfoNCE over the global batch: two gloo processes must match one process on the concatenated batch."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model import contrastive_loss

DIM_IN, DIM = 8, 4
SIZES = (3, 2)  # ranks may hold different batch sizes (the last batch of an epoch)
IDS = torch.tensor([0, 1, 2, 0, 3])  # video 0 has a caption on each rank


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.text = nn.Linear(DIM_IN, DIM)
        self.video = nn.Linear(DIM_IN, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, t, v, ids, gather=False, equal_sizes=False):
        return contrastive_loss(
            F.normalize(self.text(t), dim=-1),
            F.normalize(self.video(v), dim=-1),
            self.logit_scale,
            gather=gather,
            video_ids=ids,
            equal_sizes=equal_sizes,
        )


def batch(sizes=SIZES):
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(sizes), DIM_IN, generator=g), torch.randn(sum(sizes), DIM_IN, generator=g)


def test_matches_the_formula():
    t, v = F.normalize(torch.randn(5, DIM), dim=-1), F.normalize(torch.randn(5, DIM), dim=-1)
    scale = torch.tensor(1.5)
    logits = scale.exp() * t @ v.T
    by_hand = 0.0
    for i in range(5):
        by_hand += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    torch.testing.assert_close(contrastive_loss(t, v, scale), by_hand / 10)


def test_rows_of_one_video_are_not_each_others_negatives():
    t, v = F.normalize(torch.randn(3, DIM), dim=-1), F.normalize(torch.randn(3, DIM), dim=-1)
    scale = torch.tensor(1.0)
    logits = scale.exp() * t @ v.T
    masked = logits.clone()
    masked[0, 2] = masked[2, 0] = float("-inf")  # rows 0 and 2 are captions of the same video
    labels = torch.arange(3)
    expected = (F.cross_entropy(masked, labels) + F.cross_entropy(masked.T, labels)) / 2
    torch.testing.assert_close(contrastive_loss(t, v, scale, video_ids=torch.tensor([7, 8, 7])), expected)
    assert contrastive_loss(t, v, scale, video_ids=torch.tensor([1, 2, 3])) == contrastive_loss(t, v, scale)


def _worker(rank, port, queue, sizes, ids):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = DistributedDataParallel(Towers())
    t, v = batch(sizes)
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    loss = model(t[rows], v[rows], ids[rows], gather=True, equal_sizes=sizes[0] == sizes[1])
    loss.backward()
    # Plain lists: a shared-memory tensor would vanish with this process before the parent reads it.
    queue.put((rank, loss.item(), {n: p.grad.tolist() for n, p in model.module.named_parameters()}))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize(
    "sizes, ids",
    [(SIZES, IDS), ((3, 3), torch.tensor([0, 1, 2, 0, 3, 4]))],
    ids=["unequal sizes exchanged", "equal sizes, no exchange"],
)
def test_two_processes_equal_one_process_on_the_whole_batch(sizes, ids):
    single = Towers()
    loss = single(*batch(sizes), ids)
    loss.backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, sizes, ids)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, dist_loss, grads in results:
        assert dist_loss == pytest.approx(loss.item(), rel=1e-6)
        for name, param in single.named_parameters():
            torch.testing.assert_close(torch.tensor(grads[name]), param.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_similarities_stay_fp32_under_bf16_autocast():
    # At a logit scale of 100, bf16 logits would move the loss by far more than fp32 rounding does.
    torch.manual_seed(5)
    t, v = F.normalize(torch.randn(16, 64), dim=-1), F.normalize(torch.randn(16, 64), dim=-1)
    scale = torch.tensor(4.6)
    exact = contrastive_loss(t, v, scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = contrastive_loss(t, v, scale)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=1e-5, rtol=1e-5)
