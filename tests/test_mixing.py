"""PointwiseConv1d (spiking_ssm/mixing.py): every form is nn.Conv1d(kernel_size=1) in values, gradients,
state_dict, autocast dtype and op counts."""

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter
from torch import nn

from snn_engine.measure.ops import OpCounter
from spiking_ssm.layer import SpikingSSM
from spiking_ssm.mixing import FORMS, PointwiseConv1d, pointwise
from spiking_ssm.somas import make_ssm_neuron


def pair(form: str, bias: bool = True, dtype=torch.float64) -> tuple[nn.Conv1d, PointwiseConv1d]:
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 10, kernel_size=1, bias=bias, dtype=dtype)
    mine = PointwiseConv1d(6, 10, bias=bias, form=form, dtype=dtype)
    mine.load_state_dict(conv.state_dict())
    return conv, mine


def spikes(*shape, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(1)) < 0.3).to(dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "time-major"])
@pytest.mark.parametrize("form", FORMS)
def test_same_values_and_gradients_as_conv1d(form, layout, bias):
    conv, mine = pair(form, bias)
    x = spikes(3, 6, 17) if layout == "contiguous" else spikes(17, 3, 6).permute(1, 2, 0)
    x = (x * torch.linspace(0.5, 2.0, 17, dtype=torch.float64)).requires_grad_()  # real values too
    upstream = torch.randn(3, 10, 17, dtype=torch.float64)
    grads = []
    for module in (conv, mine):
        out = module(x)
        assert out.shape == (3, 10, 17)
        params = [module.weight] + ([module.bias] if bias else [])
        grads.append((out, *torch.autograd.grad(out, [x, *params], upstream)))
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_unbatched_input(form):
    conv, mine = pair(form)
    x = spikes(6, 9)
    torch.testing.assert_close(mine(x), conv(x), rtol=0, atol=1e-12)


def test_state_dict_and_class():
    conv, mine = pair("bmm")
    assert isinstance(mine, nn.Conv1d)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in conv.state_dict().items()}
    back = nn.Conv1d(6, 10, kernel_size=1, dtype=torch.float64)
    back.load_state_dict(mine.state_dict())  # and the other way round
    x = spikes(2, 6, 5)
    torch.testing.assert_close(back(x), mine(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="form"):
        PointwiseConv1d(6, 10, form="einsum")
    with pytest.raises(ValueError, match="form"):
        pointwise(x, mine.weight, mine.bias, "einsum")


@pytest.mark.parametrize("form", FORMS)
def test_cpu_autocast_dtype_matches_conv1d(form):
    conv, mine = pair(form, dtype=torch.float32)
    x = spikes(2, 6, 33, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = conv(x), mine(x)
        glu = F.glu(out, dim=1)
    assert ref.dtype == torch.bfloat16 and out.dtype == ref.dtype and glu.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)  # bf16 rounding of W, b, sums
    out.float().sum().backward()
    assert mine.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("form", FORMS)
def test_op_counts_unchanged(form):
    """Our OpCounter (a hook on the module) and SpikingJelly's SynOpCounter (the aten GEMM/conv ops that ran)
    count the same AC for every form."""
    conv, mine = pair(form)
    x = spikes(3, 6, 17)
    counts = []
    for module in (conv, mine):
        with OpCounter(module) as counter, torch.no_grad():
            module(x)
        ours = counter.compute()["total"]
        synops = SynOpCounter()
        with torch.no_grad(), DispatchCounterMode([synops]):
            module(x)
        counts.append((ours["ac"], ours["mac"], ours["ann_mac"], synops.get_total()))
    assert counts[0][0] > 0 and counts[1] == counts[0]


@pytest.mark.parametrize("form", FORMS)
def test_layer_with_each_form_same_as_conv(form):
    """The layer's mixing module is a PointwiseConv1d; switching its form changes no output or gradient."""
    torch.manual_seed(0)
    layer = SpikingSSM(6, lambda: make_ssm_neuron("lif"), d_state=4, bidirectional=True).double()
    assert isinstance(layer.output_linear, PointwiseConv1d) and layer.output_linear.form == "conv"
    u = torch.randn(2, 6, 20, dtype=torch.float64, requires_grad=True)
    results = []
    for chosen in ("conv", form):
        layer.output_linear.form = chosen
        out = layer(u)
        functional.reset_net(layer)
        results.append((out, *torch.autograd.grad(out.sum(), [u, layer.output_linear.weight])))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
