"""Non-finite currents and regular firing in the exact somas (issue 24).

The semantics are the sequential neuron's own float arithmetic (the ``lif`` soma: ``h = tau * u + y``,
``u = h * (1 - s)``): ``+inf`` fires and leaves ``inf * 0 = NaN``, silent from then on; NaN never fires and stays;
``-inf`` stays ``-inf`` (silent) until ``+inf`` or NaN arrives. ``lif_parallel`` (torch path here, the fused kernel
in ``test_lif_parallel_kernels.py``) and streaming follow them, and a NaN or an infinity in one neuron never changes
another neuron's spikes. Constant currents (a chain of regular firing as long as the row) settle without a cap.
"""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional

from spiking_ssm.somas import lif_scan
from spiking_ssm.somas import make_ssm_neuron
from spiking_ssm.streaming import LIFConstants
from tests.lif_currents import non_finite_rows

DTYPES = [torch.float32, torch.float64]


def _lif(rows: torch.Tensor, tau: float) -> torch.Tensor:
    soma = make_ssm_neuron("lif", tau=tau)
    functional.reset_net(soma)
    return soma(rows.T.unsqueeze(-1))[..., 0].T


def _parallel(rows: torch.Tensor, tau: float, **options) -> tuple[torch.Tensor, object]:
    soma = make_ssm_neuron("lif_parallel", tau=tau, implementation="torch", **options)
    return soma(rows.T.unsqueeze(-1))[..., 0].T, soma.last_stats


@pytest.mark.parametrize("tau", [0.0, 0.9])
def test_the_lif_soma_defines_what_non_finite_currents_do(tau):
    y = non_finite_rows(torch.float64)
    spikes = _lif(y, tau)
    assert spikes[4, :30].all() and not spikes[4, 30:].any()  # NaN: silent from then on
    assert spikes[5, :41].all() and not spikes[5, 41:].any()  # +inf: one more spike, then NaN
    assert spikes[6, :10].all() and not spikes[6, 10:].any()  # -inf (tau 0: 0 * -inf = NaN), then +inf: NaN
    membrane = lif_scan.sequential(y, tau, 1.0)
    assert membrane[4:6, -1].isnan().all() and membrane[6, 69].isnan() == (tau == 0.0) and membrane[6, 70].isnan()
    stream = LIFConstants.from_neuron(make_ssm_neuron("lif", tau=tau))
    v, streamed = torch.zeros(8, dtype=torch.float64), []
    for t in range(y.shape[1]):
        spike, v = stream.fire_and_reset(stream.charge(v, y[:, t]))
        streamed.append(spike)
    assert torch.equal(torch.stack(streamed, dim=1), spikes)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_currents_stay_in_their_row_in_the_torch_path(dtype):
    """Each odd row alone beside the four on-threshold rows: those keep the spikes they have without it (before,
    one NaN made the rounding bound NaN and no row was polished; +inf raised a math domain error), and every row
    equals the ``lif`` soma."""
    y = non_finite_rows(dtype)
    clean, _ = _parallel(y[:4], 0.9)
    assert torch.equal(clean, _lif(y[:4], 0.9))
    for odd in range(4, 8):
        rows = y[[0, 1, 2, 3, odd]]
        spikes, stats = _parallel(rows, 0.9)
        assert torch.equal(spikes[:4], clean), odd
        assert torch.equal(spikes, _lif(rows, 0.9)), odd
        assert stats.extreme == 1 and stats.row_scans[4] == 0
    spikes, stats = _parallel(y, 0.9, guess="zero")
    assert torch.equal(spikes, _lif(y, 0.9)) and stats.extreme == 4


@pytest.mark.filterwarnings("ignore::spiking_ssm.somas.lif_parallel.ExactLIFCapWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [0.125, 0.5, 0.9, 0.99])
def test_constant_currents_settle_without_a_capped_row(tau, dtype, monkeypatch):
    """64 constant currents over 2048 steps, from just above ``1 - tau`` (the membrane tends to 1.05: a long period)
    to just below 1 (a spike every other step), fire regularly: each scan fixes one spike of the chain and each
    sweep 64 steps, so the 32 scans of max_iters used to run out; the sweep's regular firing continued to the row's
    end settles every row in a few scans. (In float32 at tau 0.99 the rounding-exact phase may still reach its cap
    on a row whose membrane comes within rounding of the threshold: warned, see ``test_lif_arithmetic.py``.)"""
    levels = torch.linspace((1.0 - tau) * 1.05, 0.999, 64, dtype=torch.float64).to(dtype)
    y = levels[:, None].expand(64, 2048).contiguous()
    spikes, stats = _parallel(y, tau)
    rate = spikes.mean(dim=1)
    assert torch.equal(spikes, _lif(y, tau)) and ((rate > 0) & (rate <= 0.5)).all()
    assert stats.spike_capped == 0 and stats.scans <= 10 and stats.extended > 0
    if dtype == torch.float64 or tau < 0.99:
        assert stats.capped == 0 and stats.finished == 0
    monkeypatch.setattr(lif_scan, "_continue_regular", lambda s, end, spikes=4: 0)  # sweeps alone
    _, stats = _parallel(y, tau)
    assert stats.spike_capped > 10
