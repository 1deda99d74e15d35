"""Our CPU-capable SyncBatchNorm over 2 gloo processes equals BatchNorm on the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from snn_engine.training.distributed import GlooSyncBatchNorm, cleanup, convert_sync_batchnorm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu")).double()
    assert isinstance(model[0], GlooSyncBatchNorm)
    local = x.chunk(2)[rank].clone().requires_grad_(True)
    y = model(local)
    (y * w.chunk(2)[rank]).sum().backward()
    torch.save({"y": y.detach(), "grad": local.grad, "wgrad": model[0].weight.grad, "rm": model[0].running_mean,
                "rv": model[0].running_var}, os.path.join(out_dir, f"{rank}.pt"))
    cleanup()


@pytest.mark.slow
def test_gloo_sync_bn_equals_global_batchnorm(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * 2 + 1
    w = torch.randn_like(x)
    mp.spawn(_worker, args=(_free_port(), x, w, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]

    bn = nn.BatchNorm2d(3).double()
    xg = x.clone().requires_grad_(True)
    y = bn(xg)
    (y * w).sum().backward()
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), y, atol=1e-12)
    assert torch.allclose(torch.cat([r["grad"] for r in ranks]), xg.grad, atol=1e-12)
    assert torch.allclose(ranks[0]["wgrad"] + ranks[1]["wgrad"], bn.weight.grad, atol=1e-12)
    assert torch.allclose(ranks[0]["rm"], bn.running_mean) and torch.allclose(ranks[1]["rv"], bn.running_var)
