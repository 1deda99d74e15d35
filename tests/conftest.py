"""Test settings: W&B off, a small thread count, Triton's CPU interpreter when there is no GPU, and paths to the
repository and optional real data."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Without a GPU the fused Triton kernels run (slowly) in Triton's interpreter on CPU tensors; it must be on before
# triton is first imported. With a GPU they are tested compiled, on CUDA tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def one_thread():
    """Tiny tensors: OpenMP threads only add wake-up latency (seconds on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
