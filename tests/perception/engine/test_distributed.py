"""SyncBatchNorm and global loss normalizers: exactly plain BatchNorm / the local count in one
process, and, over 2 gloo processes with unequal element counts, the one-process result on
the concatenated batch (outputs, input and parameter gradients, running statistics)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from perception.engine import (
    SyncBatchNorm,
    SyncSparseBatchNorm,
    convert_sync_batchnorm,
    global_batch,
    global_mean_normaliser,
)
from perception.ops.sparse import BatchNorm as SparseBatchNorm
from perception.ops.sparse import SparseTensor


def test_one_process_is_plain_batchnorm_bit_for_bit():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(4)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2)
        plain.bias.uniform_(-1, 1)
    synced = convert_sync_batchnorm(nn.Sequential(plain))[0]
    reference = nn.BatchNorm2d(4)
    reference.load_state_dict(plain.state_dict())
    assert isinstance(synced, SyncBatchNorm) and synced.weight is plain.weight
    x = torch.randn(3, 4, 5, 6) * 3 + 1
    with global_batch():  # no process group: nothing to synchronize
        y = synced(x)
    torch.testing.assert_close(y, reference(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=0, atol=0)
    counts = torch.tensor([0.0, 3.0])
    with global_batch():
        assert torch.equal(global_mean_normaliser(counts, min_value=1), torch.tensor([1.0, 3.0]))
        assert torch.equal(global_mean_normaliser(counts, eps=1e-4), counts + 1e-4)


def test_convert_keeps_state_dict_and_converts_sparse_batchnorm():
    model = nn.Sequential(
        nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm1d(3)), SparseBatchNorm(3)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    convert_sync_batchnorm(model)
    assert type(model[1]) is SyncBatchNorm and type(model[2][0]) is SyncBatchNorm
    assert type(model[3]) is SyncSparseBatchNorm
    assert list(model.parameters()) == params  # the same objects: an optimizer is unaffected
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    feats = torch.randn(5, 3)
    coords = torch.tensor([[0, i, 0, 0] for i in range(5)], dtype=torch.int32)
    out = model[3](SparseTensor(feats, coords))
    torch.testing.assert_close(out.feats, nn.functional.batch_norm(
        feats, None, None, model[3].weight, model[3].bias, training=True), rtol=0, atol=0)  # fmt: skip


# -- two processes ---------------------------------------------------------------------------

# rows of the global batch per rank: unequal, and one rank without any (sparse voxels can be)
SPLITS = {"dense": (3, 7), "sparse": (6, 0)}


def _global_case(kind: str):
    """The global batch, weights and upstream gradient, the same in every process."""
    g = torch.Generator().manual_seed(7)
    n = sum(SPLITS[kind])
    shape = (n, 4, 3, 2) if kind == "dense" else (n, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 5
    weight = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, weight, bias, upstream


def _two_process_worker(rank: int, world: int, init_file: str, results: dict) -> None:
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        for kind in SPLITS:
            x, weight, bias, upstream = _global_case(kind)
            start = sum(SPLITS[kind][:rank])
            part = slice(start, start + SPLITS[kind][rank])
            module = (nn.BatchNorm2d(4) if kind == "dense" else SparseBatchNorm(4)).double()
            with torch.no_grad():
                module.weight.copy_(weight)
                module.bias.copy_(bias)
            module = convert_sync_batchnorm(module)
            xs = x[part].clone().requires_grad_(True)
            with global_batch():
                if kind == "dense":
                    y = module(xs)
                else:
                    n = xs.shape[0]
                    coords = torch.stack([torch.zeros(n), torch.arange(n), *[torch.zeros(n)] * 2])
                    y = module(SparseTensor(xs, coords.T.int())).feats
                # the process's share of sum(y * upstream) / rows, as the CenterPoint losses do
                rows = global_mean_normaliser(torch.tensor(float(xs.shape[0])))
            loss = (y * upstream[part]).sum() / rows
            loss.backward()
            grads = torch.cat([module.weight.grad, module.bias.grad])
            torch_dist.all_reduce(grads)  # what DDP does: the average over processes
            results[(kind, rank)] = {
                "y": y.detach(),
                "x_grad": xs.grad,
                "param_grad": grads / world,
                "running_mean": module.running_mean.clone(),
                "running_var": module.running_var.clone(),
            }
    finally:
        torch_dist.destroy_process_group()


def _spawned(rank: int, world: int, init_file: str, out_dir: str) -> None:
    results: dict = {}
    _two_process_worker(rank, world, init_file, results)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    torch.multiprocessing.spawn(
        _spawned, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    results: dict = {}
    for rank in range(2):
        results.update(torch.load(tmp_path / f"rank{rank}.pt"))
    for kind in SPLITS:
        x, weight, bias, upstream = _global_case(kind)
        reference = (nn.BatchNorm2d(4) if kind == "dense" else nn.BatchNorm1d(4)).double()
        with torch.no_grad():
            reference.weight.copy_(weight)
            reference.bias.copy_(bias)
        xr = x.clone().requires_grad_(True)
        y = reference(xr)
        ((y * upstream).sum() / x.shape[0]).backward()
        param_grad = torch.cat([reference.weight.grad, reference.bias.grad])
        start = 0
        for rank in range(2):
            got = results[(kind, rank)]
            part = slice(start, start + SPLITS[kind][rank])
            start = part.stop
            torch.testing.assert_close(got["y"], y[part].detach(), msg=f"{kind} rank {rank}")
            # each process's loss is W x its share: its input gradients are W x the one-process
            # ones until DDP averages the parameter gradients they lead to
            torch.testing.assert_close(got["x_grad"] / 2, xr.grad[part], msg=f"{kind} rank {rank}")
            torch.testing.assert_close(got["param_grad"], param_grad)
            torch.testing.assert_close(got["running_mean"], reference.running_mean)
            torch.testing.assert_close(got["running_var"], reference.running_var)
