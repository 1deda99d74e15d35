"""Tests of the spiking sparse-MLP (mixer_snn): paper parameter counts, every variant's shapes, the block
wiring against a hand-written functional reference of the reference's section 1.6, and argument checks."""

from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

import mixer_snn
from mixer_snn.blocks import MixerBlock, PatchCell
from mixer_snn.model import PRESETS, SparseMLPSNN
from snn_engine.errors import UserError
from snn_engine.neurons import make_neuron

NEURON = partial(make_neuron)
SMALL = dict(num_classes=5, in_chans=3, img_size=32, T=2, depths=(1, 1, 1, 1), patch_size=4)
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def small(**kw) -> SparseMLPSNN:
    torch.manual_seed(0)
    return SparseMLPSNN(NEURON, **{**SMALL, "dim": 6, **kw})


def images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize("name, overrides, expected", [
    ("sparse_mlp_t", {}, 25_229_180),
    ("sparse_mlp_s", {}, 37_975_568),
    ("sparse_mlp_b", {}, 65_008_348),
    ("sparse_mlp_s", {"spe": False}, 34_507_408),  # MLP-S
])
def test_paper_parameter_counts(name, overrides, expected):
    model = mixer_snn.create_model(name, NEURON, num_classes=1000, **overrides)
    assert n_params(model) == expected
    assert PRESETS["mlp_s"] == {**PRESETS["sparse_mlp_s"], "spe": False}


@pytest.mark.parametrize("channels, n", [(78, 56), (192, 28), (312, 14), (24, 1)])
def test_block_closed_form_count(channels, n):
    spe_block = MixerBlock(channels, n, 3, NEURON, "bn", 4, identity_bn_lif=False, channel_bn_axis="token")
    assert n_params(spe_block) == 9 * channels**2 + 6 * channels + 6 * n**2 + 6 * n
    plain_block = MixerBlock(channels, n, 3, NEURON, "bn", 4, identity_bn_lif=True, channel_bn_axis="token")
    assert n_params(plain_block) == 9 * channels**2 + 8 * channels + 6 * n**2 + 6 * n
    c = 3 * channels  # PatchCell to C has 6.5 C^2 + 10 C / 3 parameters
    assert 6 * n_params(PatchCell(c // 2, c, NEURON, "bn", 4)) == 39 * c * c + 20 * c


def test_model_closed_form_count():
    dim, depths, classes = 78, (2, 8, 14, 2), 1000
    total = 48 * dim + 2 * dim + 16 * dim + 8 * dim * classes + classes
    for s, depth in enumerate(depths):
        c, n = dim * 2**s, 56 // 2**s
        total += depth * (9 * c * c + 6 * c + 6 * n * n + 6 * n) + (s > 0) * (6.5 * c * c + 10 * c / 3)
    assert total == 25_229_180


def test_norm_variants_parameter_layout():
    base = n_params(small())
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in small().modules())
    assert n_params(small(norm="tdbn")) == base
    assert n_params(small(norm="tebn", T=3)) == base + 3 * n_bn
    ln = small(norm="ln")
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 4 * 4  # 2 token + 2 channel per block
    assert isinstance(ln.stages[0].embed.norm.bn, nn.BatchNorm2d) and isinstance(ln.head_norm.bn, nn.BatchNorm2d)
    token_axis = small().stages[0].blocks[0].channel
    assert token_axis.norm1.norm.bn.num_features == 8 * 8 and token_axis.norm2.norm.bn.num_features == 8 * 8
    channel_axis = small(channel_bn_axis="channel").stages[0].blocks[0].channel
    assert channel_axis.norm1.norm.bn.num_features == 18 and channel_axis.norm2.norm.bn.num_features == 6


# ----------------------------------------------------------------------------------------------- forward
VARIANTS = list(itertools.product([True, False], ["bn", "tdbn", "tebn", "ln"], ["token", "channel"], [False, True]))


@pytest.mark.parametrize("spe, norm, axis, head_lif", VARIANTS)
def test_every_variant_output_shape(spe, norm, axis, head_lif):
    model = small(spe=spe, norm=norm, channel_bn_axis=axis, head_lif=head_lif, dim=6 if spe else 4)
    out = model(images())
    assert out.shape == (2, 2, 5) and torch.isfinite(out).all()
    functional.reset_net(model)
    feat = model.forward_features(images())
    assert feat.shape == (2, 2, 8 * model.dim, 1, 1)
    assert model.forward_head(feat).shape == (2, 2, 5)
    assert model.T == 2 and model.num_classes == 5


def test_time_major_input_equals_direct_encoding():
    for training in (True, False):
        a, b = small(), small()
        a.train(training), b.train(training)
        x = images()
        out_static = a(x)
        out_seq = b(x.unsqueeze(0).repeat(2, 1, 1, 1, 1))
        torch.testing.assert_close(out_static, out_seq)
        for (name, buf_a), (_, buf_b) in zip(a.named_buffers(), b.named_buffers()):
            torch.testing.assert_close(buf_a, buf_b, msg=name)
    # a time-major input with another number of steps is used as is
    model = small()
    assert model(torch.randn(3, 2, 3, 32, 32)).shape == (3, 2, 5)


def test_gradients_reach_the_stem_and_reset_makes_runs_repeatable():
    model = small(dim=12)
    model(images()).mean(0).logsumexp(-1).sum().backward()
    grad = model.stages[0].embed.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    functional.reset_net(model)
    with torch.no_grad():  # train mode: BN uses batch statistics, so equal inputs give equal outputs
        first = model(images())
        second = model(images())  # without a reset the membrane state carries over
        functional.reset_net(model)
        third = model(images())
    assert torch.equal(first, third) and not torch.equal(first, second)


@pytest.mark.parametrize("spe, head_lif, expected", [(True, False, 30), (False, False, 28), (True, True, 31)])
def test_spikes_are_binary_after_every_neuron(spe, head_lif, expected):
    created: list[nn.Module] = []

    def counting_neuron():
        created.append(make_neuron())
        return created[-1]

    torch.manual_seed(0)
    model = SparseMLPSNN(counting_neuron, **{**SMALL, "dim": 12, "spe": spe, "head_lif": head_lif})
    assert len(created) == expected  # 5 (SPE) / 6 (identity LIF) per block + 4 stage LIFs + 2 per PatchCell
    seen = []

    def check(module, inputs, output):
        assert output.shape[:2] == (2, 2)
        assert ((output == 0) | (output == 1)).all()
        seen.append(output.mean().item())

    for neuron in created:
        neuron.register_forward_hook(check)
    model(images() * 3)
    assert len(seen) == expected and max(seen) > 0


def test_batch_norms_are_plain_and_sync_convertible():
    model = small(norm="tebn")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in bns)
    x = images()
    reference = model(x)
    functional.reset_net(model)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # without a process group it runs as plain BN
    torch.testing.assert_close(synced(x), reference)


# ----------------------------------------------------------------------------------------------- wiring
def lif_reference(current: torch.Tensor) -> torch.Tensor:
    """The paper's LIF (tau 2, decay_input, v_th 1, hard reset to 0) over the leading time axis."""
    v, spikes = torch.zeros_like(current[0]), []
    for x in current:
        v = v + (x - v) / 2.0
        spike = (v >= 1.0).to(current.dtype)
        v = v * (1.0 - spike)
        spikes.append(spike)
    return torch.stack(spikes)


def bn_reference(x: torch.Tensor, bn: nn.Module, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def block_reference(block: MixerBlock, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Section 1.6 written out on the reference's own [T, B, C, H, W] layout."""
    tok, ch = block.token, block.channel
    wh, bh = tok.mix_h.proj.weight, tok.mix_h.proj.bias
    ww, bw = tok.mix_w.proj.weight, tok.mix_w.proj.bias
    x_w = torch.einsum("tbchw,vw->tbchv", x, ww) + bw  # 1x1 conv across W, BN per w
    x_w = lif_reference(bn_reference(x_w, tok.mix_w.norm.norm.bn, 4))
    x_h = torch.einsum("tbchw,vh->tbcvw", x, wh) + bh[:, None]
    x_h = lif_reference(bn_reference(x_h, tok.mix_h.norm.norm.bn, 3))
    cat = torch.cat([x, x_h, x_w], dim=2)
    a = bn_reference(torch.einsum("tbkhw,ck->tbchw", cat, tok.fuse.weight), tok.fuse_norm.bn, 2)
    x_tok = lif_reference(h + a)
    T, B, C, H, W = x.shape
    tokens = x_tok.flatten(3).transpose(-1, -2)  # [T, B, N, C]
    z = lif_reference(bn_reference(tokens @ ch.fc1.weight.T + ch.fc1.bias, ch.norm1.norm.bn, 2))
    z = bn_reference(z @ ch.fc2.weight.T + ch.fc2.bias, ch.norm2.norm.bn, 2)
    b = z.transpose(-1, -2).reshape(T, B, C, H, W)
    return lif_reference(h + a + b)


def randomize_batch_norms(module: nn.Module, generator: torch.Generator) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            f = bn.num_features
            bn.running_mean.copy_(torch.randn(f, generator=generator, dtype=bn.running_mean.dtype) * 0.3)
            bn.running_var.copy_(torch.rand(f, generator=generator, dtype=bn.running_var.dtype) + 0.5)
            bn.weight.data.copy_(torch.randn(f, generator=generator, dtype=bn.weight.dtype) * 0.5 + 1.0)
            bn.bias.data.copy_(torch.randn(f, generator=generator, dtype=bn.bias.dtype) * 0.3)


def test_block_matches_functional_reference_of_the_stage_anchor_wiring():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    T, B, C, n = 3, 2, 6, 4
    block = MixerBlock(C, n, 3, NEURON, "bn", T, identity_bn_lif=False, channel_bn_axis="token").double().eval()
    with torch.no_grad():
        randomize_batch_norms(block, g)
        x = (torch.rand(T, B, C, n, n, generator=g) < 0.3).double()
        h = torch.randn(T, B, C, n, n, generator=g, dtype=torch.float64) * 1.5 + 0.5
        ours = block(x.permute(0, 1, 3, 4, 2).contiguous(), h.permute(0, 1, 3, 4, 2).contiguous())
        ref = block_reference(block, x, h)
    assert 0 < ref.mean() < 1
    torch.testing.assert_close(ours.permute(0, 1, 4, 2, 3), ref)


def test_every_block_of_a_stage_gets_the_same_anchor():
    model = small(dim=6, depths=(3, 1, 1, 1))
    stage, anchors = model.stages[0], []
    stage.embed.register_forward_hook(lambda m, i, out: anchors.append(out))
    for block in stage.blocks:
        block.register_forward_pre_hook(lambda m, args: anchors.append(args[1]))
    model(images())
    assert len(anchors) == 4 and all(a is anchors[0] for a in anchors)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(img_size=40), "divisible"),
    (dict(dim=8), "multiple of 3"),
    (dict(norm="group"), "model.norm"),
    (dict(channel_bn_axis="time"), "channel_bn_axis"),
    (dict(depths=(1, 1, 1)), "depths"),
    (dict(T=0), "model.T"),
    (dict(dim=2.5), "model.dim"),
])
def test_bad_arguments_raise_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        SparseMLPSNN(NEURON, **{**SMALL, "dim": 6, **kwargs})


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="neuron"):
        SparseMLPSNN(None, **SMALL)
    model = small()
    with pytest.raises(UserError, match="img_size"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(UserError, match=r"\[B, C, H, W\]"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(UserError, match="model.T"):
        small(norm="tebn")(torch.randn(3, 2, 3, 32, 32))
    with pytest.raises(UserError, match="preset"):
        mixer_snn.create_model("sparse_mlp_xl", NEURON)
    assert SparseMLPSNN(NEURON, **{**SMALL, "dim": 8, "spe": False}).identity_bn_lif


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["sparse_mlp_t", "sparse_mlp_s", "sparse_mlp_b", "sparse_mlp_tiny"])
def test_hydra_model_configs_match_presets(name):
    from omegaconf import OmegaConf

    text = (CONF / f"{name}.yaml").read_text()
    assert text.startswith("#")
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"),
                          {"dataset": {"num_classes": 10, "in_chans": 3, "image_size": 32}})
    model_cfg = OmegaConf.to_container(cfg, resolve=True)
    model_cfg.pop("dataset")
    assert model_cfg.pop("_target_") == "mixer_snn.SparseMLPSNN"
    preset = PRESETS[name]
    for key in ("dim", "alpha", "patch_size", "spe"):
        assert model_cfg[key] == preset[key]
    assert tuple(model_cfg["depths"]) == preset["depths"]
    if name == "sparse_mlp_tiny":
        from hydra.utils import instantiate

        model = instantiate({"_target_": "mixer_snn.SparseMLPSNN", **model_cfg}, neuron=NEURON)
        assert isinstance(model, SparseMLPSNN) and model(images(size=32)).shape == (4, 2, 10)
