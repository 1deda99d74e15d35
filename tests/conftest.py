"""Test settings: W&B off, one or two threads per test process (never more than the cores it shares), Triton's CPU
interpreter when there is no GPU, the order in which pytest-xdist starts the files, and paths to the repository and
optional real data."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Without a GPU the fused Triton kernels run (slowly) in Triton's interpreter on CPU tensors; it must be on before
# triton is first imported. With a GPU they are tested compiled, on CUDA tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist runs PYTEST_XDIST_WORKER_COUNT test processes side by side. OpenMP threads beyond the cores they share
# spin-wait for each other: on 2 cores, two workers of 2 threads each ran a training epoch 2x slower than with 1.
# The subprocesses the tests start (the command line, torchrun) inherit OMP_NUM_THREADS.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREADS = max(1, min(2, _cores // _workers))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)

# The files with minutes of work, longest first: `make test` hands whole files to the workers in collection order
# (--dist loadfile --no-loadscope-reorder), so these start at once and the many short files fill in around them and
# the workers finish together (without this, pytest-xdist's default order, most tests first, left the longest files
# for last: a 4-minute tail on one worker).
RUN_FIRST = ("test_kernel_compile.py", "test_cli_and_real_data.py", "test_training.py", "test_faults.py",
             "test_ssm_kernels.py", "test_lif_parallel_kernels.py", "test_eval_report.py", "test_lm_experiments.py",
             "test_moved_modules.py", "test_slurm_launch.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: the other files keep their order


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
