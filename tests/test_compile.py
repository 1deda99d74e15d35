"""``trainer.compile``: mode resolution, the in-run gain measurement and unchanged training results (issue 9).

The suite compiles with torch's ``eager`` backend (dynamo tracing, graph breaks and module-state handling, without
inductor's minutes of code generation on 2 cores); ``benchmarks/compile_gain.py`` measures inductor.
"""

import pytest
import torch
from torch import nn

from snn_engine import run
from snn_engine.training.compiling import CompileTimer, resolve_compile_mode
from snn_engine.errors import UserError
from tests.helpers import TINY, compose_train, load_weights, read_summary

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_compile_modes_resolve_per_device_with_clear_errors():
    for off in (False, None, "false", "null"):
        assert resolve_compile_mode(off, CPU) is None
    assert resolve_compile_mode(True, CPU) == "default"
    assert resolve_compile_mode(True, CUDA) == "reduce-overhead"  # CUDA graphs
    assert resolve_compile_mode("max-autotune-no-cudagraphs", CPU) == "max-autotune-no-cudagraphs"
    with pytest.raises(UserError, match="needs CUDA; use trainer.compile=default"):
        resolve_compile_mode("reduce-overhead", CPU)
    with pytest.raises(UserError, match="unknown trainer.compile='fast'"):
        resolve_compile_mode("fast", CPU)
    with pytest.raises(UserError, match="compile_backend"):
        CompileTimer("default", "tvm", CPU)
    with pytest.raises(UserError, match="compile_baseline_steps"):
        CompileTimer("default", "eager", CPU, baseline_steps=-1)


def test_timer_runs_baseline_then_compiles_then_measures():
    net = nn.Linear(3, 2)
    timer = CompileTimer("default", "eager", CPU, baseline_steps=2, measure_steps=3)
    assert timer.initial(net) is net and timer.phase == "eager"
    phases = []
    for _ in range(8):
        phases.append(timer.phase)
        timer.begin()
        net(torch.randn(4, 3)).sum().backward()
        net = timer.end(net)
    assert phases == ["eager", "eager", "compile", "compiled", "compiled", "compiled", None, None]
    assert isinstance(net, torch._dynamo.eval_frame.OptimizedModule)
    report = timer.report()
    assert report["steps_timed"] == {"eager": 2, "compile": 1, "compiled": 3}
    assert report["speedup"] == pytest.approx(report["eager_step_s"] / report["compiled_step_s"])
    assert "torch.compile (default, eager): eager" in timer.describe() and "x), compilation" in timer.describe()
    off = CompileTimer(None, "inductor", CPU)
    assert off.initial(net) is net and off.phase is None and off.report() is None


@pytest.mark.slow
def test_compiled_training_equals_eager_training(tmp_path):
    base = TINY + ["trainer.max_steps=6", "trainer.epochs=1", "optimizer=sgd", "optimizer.lr=0.05"]
    run.train(compose_train(base), tmp_path / "eager")
    compiled = base + ["trainer.compile=default", "trainer.compile_backend=eager", "trainer.compile_baseline_steps=2"]
    run.train(compose_train(compiled), tmp_path / "compiled")
    summary = read_summary(tmp_path / "compiled")
    assert summary["compile"]["steps_timed"] == {"eager": 2, "compile": 1, "compiled": 3}
    assert summary["compile"]["mode"] == "default" and summary["compile"]["speedup"] > 0
    assert read_summary(tmp_path / "eager")["compile"] is None
    eager_w, compiled_w = load_weights(tmp_path / "eager"), load_weights(tmp_path / "compiled")
    assert eager_w.keys() == compiled_w.keys()
    for key in eager_w:
        assert torch.allclose(eager_w[key].float(), compiled_w[key].float(), atol=1e-5, rtol=1e-5), key
    assert summary["final"]["loss"] == pytest.approx(read_summary(tmp_path / "eager")["final"]["loss"], rel=1e-5)


@pytest.mark.parametrize("overrides", [
    ["model=sparse_mlp_tiny", "dataset.train_size=64", "dataset.val_size=32"],
    ["experiment=lm/embedded", "dataset.train_tokens=5000", "dataset.val_tokens=500", "dataset.test_tokens=500",
     "model.d_model=32"],
], ids=["sparse_mlp_tiny", "spiking_lm"])
@pytest.mark.slow
def test_training_forward_traces_as_one_graph(overrides):
    """No graph breaks (a break per layer would also split every CUDA graph under reduce-overhead)."""
    from hydra.utils import instantiate

    from snn_engine.run import build_model

    cfg = compose_train(overrides + ["logger=none"])
    model = build_model(cfg, instantiate(cfg.dataset)).train()
    inputs = ((torch.randint(0, 60, (2, 16)), torch.randint(0, 60, (2, 16))) if "lm" in overrides[0]
              else (torch.randn(2, 3, 32, 32),))
    explained = torch._dynamo.explain(model)(*inputs)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
