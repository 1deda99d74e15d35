"""The ``lif_parallel`` soma's fused Triton kernels against the sequential LIF and the torch reference (Triton's CPU
interpreter without a GPU).

Small odd shapes in 64-step chunks (Triton's interpreter scans a chunk step by step; the launched 512-step chunks
in one test): lengths 1, below, at and across a chunk; silent rows and rows silent for longer than a chunk (the
rounding path then replays steps from an earlier chunk). The forward's spikes must equal the sequential
LIF's exactly for any guess, any tau, with the scan capped after one iteration, and with the rounding path forced
on every step (then the membrane is the sequential one bit for bit too), on currents built to land on the threshold
(the ``lif`` soma's spikes) and with NaN or infinite currents (the ``lif`` soma's semantics, in their own row); the
backward must equal the torch BPTT scan.
"""

import pytest
import torch
from spikingjelly.activation_based import functional

from spiking_ssm.somas import lif_scan
from spiking_ssm.kernels import lif_fixed_point, runtime
from spiking_ssm.somas import make_ssm_neuron
from tests.lif_currents import landed, non_finite_rows, on_threshold_currents

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(runtime.triton_unavailable(DEVICE) is not None,
                                reason="needs CUDA or TRITON_INTERPRET=1 (set by conftest without a GPU)")
DTYPES = [torch.float32, torch.float64]
BLOCK = 64


def _rows(length: int, dtype, seed: int, rows: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(rows, length, generator=g, dtype=torch.float64) * 1.2 + 0.3
    y[0] = -0.2  # a silent row
    y[1, : 2 * length // 3] = 0.5  # silent for most of the row (longer than a chunk at the longest lengths)
    return y.to(DEVICE, dtype)


def _sequential(y: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    h = lif_scan.sequential(y, tau, 1.0)
    return h >= 1.0, h


@pytest.mark.parametrize("length", [1, 5, *(pytest.param(n, marks=pytest.mark.slow) for n in (64, 65, 300))])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_equals_the_sequential_lif(length, dtype):
    for tau in (0.05, 0.125, 0.6, 0.95):
        y = _rows(length, dtype, seed=length)
        exact, exact_h = _sequential(y, tau)
        for guess in (None, ~exact, torch.rand(exact.shape, device=DEVICE) < 0.5):
            # a chunk's iteration is triangular: it settles within BLOCK + 1 scans from any guess
            spikes, h, stats = lif_fixed_point.fixed_point(y, guess, tau, max_iters=BLOCK + 1, block=BLOCK)
            assert spikes.dtype == torch.bool and h.dtype == dtype
            assert torch.equal(spikes, exact), (tau, length, dtype)
            torch.testing.assert_close(h, exact_h, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=1e-5)
            assert stats.capped == 0 and 1 <= stats.scans <= BLOCK + 1
            assert torch.all(stats.chunk_scans >= stats.row_scans)


def test_the_launched_chunk_length():
    y = _rows(lif_fixed_point.BLOCK + 3, torch.float32, seed=1)
    exact, _ = _sequential(y, 0.125)
    spikes, _, stats = lif_fixed_point.fixed_point(y, None, 0.125, max_iters=32)
    assert torch.equal(spikes, exact) and stats.capped == 0
    assert torch.equal(stats.chunk_scans[2:] > stats.row_scans[2:], torch.ones(3, dtype=torch.bool))  # 2 chunks


@pytest.mark.slow
def test_sweeps_shorten_chains_of_regular_firing():
    """Smooth currents fire regularly: each scan moves one spike of the chain; a sweep walks the rest of the chunk
    sequentially for the next guess, so a chunk settles in a few scans, exactly as before."""
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(4, 300, generator=g, dtype=torch.float64) * 0.3 + 0.45).to(DEVICE)
    exact, _ = _sequential(y, 0.5)
    plain = lif_fixed_point.fixed_point(y, None, 0.5, 200, block=BLOCK)
    swept = lif_fixed_point.fixed_point(y, None, 0.5, 200, sweep=BLOCK, block=BLOCK)
    assert torch.equal(plain[0], exact) and torch.equal(swept[0], exact)
    assert plain[2].sweeps == 0 and swept[2].sweeps > 0
    assert plain[2].scans > lif_fixed_point.SWEEP_AFTER + 2 >= swept[2].scans
    assert swept[2].chunk_scans.sum() < plain[2].chunk_scans.sum()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_rounding_path_is_the_sequential_neuron_bit_for_bit(dtype):
    """A wide doubtful band sends steps through the float map, from the latest reset (replaying earlier chunks when
    the chunk has none); an infinite band sends every step: then the membrane is the sequential run's exactly."""
    y = _rows(300, dtype, seed=5)
    for tau in (0.125, 0.9):
        exact, exact_h = _sequential(y, tau)
        for extra in (0.02, 0.3, float("inf")):
            spikes, h, stats = lif_fixed_point.fixed_point(y, None, tau, max_iters=64, extra_margin=extra, block=BLOCK)
            assert torch.equal(spikes, exact) and int(stats.row_polish.sum()) > 0
            if extra == float("inf"):
                assert torch.equal(h, exact_h)
                assert any("sequential steps replayed" in note for note in stats.notes)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_capped_chunks_are_finished_exactly_or_reported(dtype):
    y = _rows(300, dtype, seed=8, rows=8)
    exact, _ = _sequential(y, 0.7)
    spikes, _, stats = lif_fixed_point.fixed_point(y, None, 0.7, max_iters=1, block=BLOCK)
    assert torch.equal(spikes, exact)
    assert stats.capped > 0 and stats.finished == stats.capped and stats.scans == 1
    loose, _, stats = lif_fixed_point.fixed_point(y, None, 0.7, max_iters=1, finish=False, block=BLOCK)
    assert stats.capped > 0 and stats.finished == 0 and not torch.equal(loose, exact)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0 in the scan
def test_infinite_currents_follow_the_sequential_neuron():
    y = _rows(300, torch.float32, seed=2)
    y[2, 100], y[3, 250], y[4, 0] = float("inf"), float("inf"), -float("inf")
    exact, _ = _sequential(y, 0.125)
    spikes, _, _ = lif_fixed_point.fixed_point(y, None, 0.125, max_iters=64, block=BLOCK)
    assert torch.equal(spikes, exact)
    y[2, 200] = float("nan")  # the neuron is NaN from there on: no spike
    spikes, _, _ = lif_fixed_point.fixed_point(y, None, 0.125, max_iters=64, block=BLOCK)
    assert torch.equal(spikes[[0, 1, 3, 4]], _sequential(y[[0, 1, 3, 4]], 0.125)[0])
    assert not spikes[2, 200:].any()


def _lif(y: torch.Tensor, tau: float) -> torch.Tensor:
    """The ``lif`` soma's spikes (bool) on rows ``y [N, L]`` (CPU)."""
    soma = make_ssm_neuron("lif", tau=tau)
    functional.reset_net(soma)
    return soma(y.cpu().T.unsqueeze(-1))[..., 0].T.bool()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_on_threshold_currents_equal_the_lif_soma(dtype):
    """Currents that put the membrane exactly on the threshold or one ulp beside it, in chains (6 rows x 150 steps,
    three 64-step chunks, per tau): the kernel's spikes are the ``lif`` soma's, every one."""
    for tau in (0.125, 0.5, 0.9, 0.99):
        y, kind = on_threshold_currents(tau, dtype, rows=6, length=150, seed=11)
        assert landed(y, kind, tau).sum() >= 0.9 * (kind > 0).sum()
        spikes, _, stats = lif_fixed_point.fixed_point(y.to(DEVICE), None, tau, max_iters=BLOCK + 1, block=BLOCK)
        assert torch.equal(spikes.cpu(), _lif(y, tau)), (tau, dtype)
        assert int(stats.row_polish.sum()) > 0 and stats.capped == 0


def test_the_fused_soma_equals_lif_in_spikes_and_gradient_on_threshold_currents():
    y, _ = on_threshold_currents(0.9, torch.float64, rows=4, length=100, seed=12)
    x = y.T.unsqueeze(-1)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    results = []
    for soma in (make_ssm_neuron("lif_parallel", tau=0.9, implementation="triton"), make_ssm_neuron("lif", tau=0.9)):
        inputs = x.clone().to(DEVICE).requires_grad_()
        functional.reset_net(soma)
        spikes = soma.to(DEVICE)(inputs)
        (spikes * upstream.to(DEVICE)).sum().backward()
        results.append((spikes.detach().cpu(), inputs.grad.cpu()))
    assert torch.equal(results[0][0], results[1][0]) and results[0][0].sum() > 50
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_currents_follow_the_lif_soma_in_their_own_row(dtype):
    """NaN, +inf, -inf then +inf, and currents near the dtype's largest number (one row each, beside on-threshold
    rows): spikes and the membrane's NaNs as the ``lif`` soma and the torch path, the other rows untouched; the
    kernel flags the four rows, which then run sequentially, and their scans of non-finite values count as no cap."""
    y = non_finite_rows(dtype)
    for tau in (0.0, 0.9):
        spikes, h, stats = lif_fixed_point.fixed_point(y.to(DEVICE), None, tau, max_iters=BLOCK + 1, block=BLOCK)
        assert torch.equal(spikes.cpu(), _lif(y, tau)), tau
        assert torch.equal(h.cpu().isnan(), lif_scan.sequential(y, tau, 1.0).isnan())
        clean, _, _ = lif_fixed_point.fixed_point(y[:4].to(DEVICE), None, tau, max_iters=BLOCK + 1, block=BLOCK)
        assert torch.equal(spikes[:4], clean)
        assert stats.extreme == 4 and stats.capped == 0 and any("run sequentially" in n for n in stats.notes)


@pytest.mark.parametrize("length", [1, 5, 512, 700])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_equals_the_torch_bptt_scan(length, dtype):
    g = torch.Generator().manual_seed(length)
    h = (torch.randn(5, length, generator=g, dtype=torch.float64) * 0.8 + 0.8).to(DEVICE, dtype)
    spikes = h >= 1.0
    grad = torch.randn(5, length, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for tau, alpha in ((0.125, 1.0), (0.7, 0.3), (0.95, 2.5)):
        reference = lif_scan.bptt_gradient(grad, lif_scan.surrogate_factor(h, 1.0, alpha), spikes, tau)
        torch.testing.assert_close(lif_fixed_point.bptt_gradient(grad, h, spikes, tau, alpha), reference,
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("length", [9, 263])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [0.125, 0.6])
def test_fused_soma_equals_the_sequential_lif_and_the_torch_soma(length, dtype, tau):
    g = torch.Generator().manual_seed(3)
    wide = (1.2 * torch.randn(2, 3, 2 * length, generator=g, dtype=torch.float64) + 0.3).to(DEVICE, dtype)
    y = wide[..., :length].permute(2, 0, 1)  # the layer's strided [B, H, L] view, time-major
    upstream = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    results = []
    guesses = ("auto", "sdn") if tau == 0.125 else ("auto",)
    for implementation, guess in [("triton", guess) for guess in guesses] + [("torch", "auto")]:
        soma = make_ssm_neuron("lif_parallel", tau=tau, implementation=implementation, guess=guess).to(DEVICE)
        x = y.detach().clone().requires_grad_()
        spikes = soma(x)
        (spikes * upstream).sum().backward()
        assert soma.last_implementation == implementation
        results.append((spikes.detach(), x.grad))
    sequential = make_ssm_neuron("sltt", tau=tau, implementation="torch")(y.contiguous())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for spikes, grad in results:
        assert torch.equal(spikes, sequential)
        torch.testing.assert_close(grad, results[-1][1], rtol=tol, atol=tol)
