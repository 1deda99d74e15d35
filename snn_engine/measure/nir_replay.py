"""Read a written NIR graph back through the ecosystem and run it: SpikingJelly's ``nir_exchange.import_from_nir``
(on top of the ``nirtorch`` package, both in the project's ``nir`` extra).

``replay_nir(path_or_graph, images, T, dt)`` rebuilds the graph as a SpikingJelly ``fx.GraphModule`` in float64,
presents the same images ``[B, Cin, H, W]`` at each of ``T`` steps (direct encoding) carrying the neuron state from
step to step, and returns the output node's values ``[T, B, K]``. :func:`logit_difference` compares them with a
model's own eval logits: the check ``eval.py nir=true`` reports.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from snn_engine.errors import UserError


def replay_nir(graph, images: torch.Tensor, T: int, dt: float = 1e-4) -> torch.Tensor:
    """Simulate ``graph`` (a ``nir.NIRGraph`` or a written file) for ``T`` steps -> outputs ``[T, B, K]`` (float64)."""
    try:
        from spikingjelly.activation_based.nir_exchange import import_from_nir
    except ModuleNotFoundError as missing:
        raise UserError(f"reading a NIR graph back needs the nir extra ({missing.name} is missing): "
                        "`uv sync --extra nir`") from None
    source = str(graph) if isinstance(graph, (str, Path)) else graph
    try:
        module = import_from_nir(source, dt=float(dt), dtype=torch.float64, step_mode="s")
    except (ValueError, NotImplementedError) as err:
        raise UserError(f"SpikingJelly's import_from_nir cannot read this graph: {err}") from None
    x = images.detach().to("cpu", torch.float64)
    state, steps = None, []
    with torch.no_grad():
        for _ in range(int(T)):
            out, state = module(x, state)
            steps.append(out)
    return torch.stack(steps)


def logit_difference(model: nn.Module, graph, images: torch.Tensor, T: int, dt: float) -> float:
    """Largest ``|replayed graph - model|`` over the eval logits ``[T, B, K]`` of ``images`` (model run in float64
    on a CPU copy, so the number measures the graph, not the precision the model was trained in)."""
    import copy

    from spikingjelly.activation_based.functional import reset_net

    reference = copy.deepcopy(model).to("cpu", torch.float64).eval()
    reset_net(reference)
    with torch.no_grad():
        expected = reference(images.detach().to("cpu", torch.float64))
    got = replay_nir(graph, images, T, dt)
    if got.shape != expected.shape:
        raise UserError(f"the replayed NIR graph gives {tuple(got.shape)} outputs, the model {tuple(expected.shape)}")
    return float((got - expected).abs().max())
