"""A small discrete-time NIR interpreter for the graphs written by :mod:`mixer_snn.nir_export`.

``run_nir(graph, images, T, dt)`` presents the same images ``[B, Cin, H, W]`` at each of ``T`` steps and
returns the output node's values ``[T, B, K]`` (torch float64). Nodes run in topological order every step;
every node's input is the sum of its incoming edges; neurons keep their membrane across steps. Neuron
dynamics are SpikingJelly's, recovered from the NIR parameters as its ``from_nir`` does: ``tau/dt`` steps,
``r == 1`` means ``decay_input``, IF needs ``r == 1/dt``; hard reset to ``v_reset``; spike when ``H >= v_th``.
"""

from __future__ import annotations

from collections import deque

import nir
import numpy as np
import torch
import torch.nn.functional as F

from snn_engine.errors import UserError

SUPPORTED = (nir.Input, nir.Output, nir.Conv2d, nir.Flatten, nir.Affine, nir.Linear, nir.LIF, nir.IF)


def t64(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def topological_order(graph: nir.NIRGraph) -> list[str]:
    """Node names with every edge's source before its target (Kahn); a cycle raises :class:`UserError`."""
    indegree = {name: 0 for name in graph.nodes}
    for _, dst in graph.edges:
        indegree[dst] += 1
    ready = deque(name for name, d in indegree.items() if d == 0)
    order = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for src, dst in graph.edges:
            if src == name:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
    if len(order) != len(graph.nodes):
        raise UserError("the NIR graph has a cycle within a time step; run_nir supports feed-forward graphs only")
    return order


class NeuronState:
    """One NIR LIF/IF population with SpikingJelly's discrete dynamics: current ``[B, N]`` -> spikes ``[B, N]``."""

    def __init__(self, node: nir.NIRNode, dt: float):
        self.v_th, self.v_reset = t64(node.v_threshold).flatten(), t64(node.v_reset).flatten()
        r = t64(node.r).flatten()
        if isinstance(node, nir.IF):
            if not torch.allclose(r, torch.full_like(r, 1.0 / dt)):
                raise UserError(f"nir.IF.r must equal 1/dt={1.0 / dt}; pass the dt used for the export")
            self.tau, self.decay_input = None, True
        else:
            self.tau = t64(node.tau).flatten() / dt
            if not torch.allclose(t64(node.v_leak).flatten(), self.v_reset):
                raise UserError("nir.LIF.v_leak must equal v_reset (SpikingJelly convention); re-export the graph")
            ones, taus = torch.isclose(r, torch.ones_like(r)), torch.isclose(r, self.tau)
            if not bool((ones | taus).all()):
                raise UserError("nir.LIF.r must equal 1 or tau/dt; pass the dt used for the export")
            self.decay_input = ones
        self.v: torch.Tensor | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v_reset.expand_as(x) if self.v is None else self.v
        if self.tau is None:
            h = v + x
        else:
            h = torch.where(self.decay_input, v + (x - (v - self.v_reset)) / self.tau,
                            v - (v - self.v_reset) / self.tau + x)
        spike = (h >= self.v_th).to(x.dtype)
        self.v = spike * self.v_reset + (1.0 - spike) * h
        return spike


def conv2d(node: nir.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``nir.Conv2d`` on ``[B, Cin, H, W]`` (int/pair padding)."""
    pair = lambda v: tuple(int(a) for a in np.broadcast_to(np.asarray(v), (2,)))  # noqa: E731
    if isinstance(node.padding, str):
        raise UserError("run_nir supports numeric Conv2d padding only; re-export the graph")
    return F.conv2d(x, t64(node.weight), t64(node.bias), pair(node.stride), pair(node.padding), pair(node.dilation),
                    int(node.groups))


def flatten(node: nir.Flatten, x: torch.Tensor) -> torch.Tensor:
    """NIR Flatten dims exclude the batch axis: shift non-negative dims by one."""
    start, end = int(node.start_dim), int(node.end_dim)
    return x.flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)


def evaluate(node: nir.NIRNode, x: torch.Tensor, state: NeuronState | None) -> torch.Tensor:
    """One stateless node or one neuron step on batched input ``x``."""
    if isinstance(node, nir.Conv2d):
        return conv2d(node, x)
    if isinstance(node, nir.Flatten):
        return flatten(node, x)
    if isinstance(node, nir.Affine):
        return x @ t64(node.weight).T + t64(node.bias)
    if isinstance(node, nir.Linear):
        return x @ t64(node.weight).T
    if isinstance(node, (nir.LIF, nir.IF)):
        return state.step(x)
    if isinstance(node, nir.Output):
        return x
    raise UserError(f"run_nir does not support nir.{type(node).__name__}; supported: "
                    f"{[t.__name__ for t in SUPPORTED]}")


def run_nir(graph: nir.NIRGraph, images: torch.Tensor, T: int, dt: float = 1e-4) -> torch.Tensor:
    """Simulate ``graph`` for ``T`` steps with ``images [B, Cin, H, W]`` at every step -> outputs ``[T, B, K]``."""
    unknown = sorted({type(n).__name__ for n in graph.nodes.values() if not isinstance(n, SUPPORTED)})
    if unknown:
        raise UserError(f"run_nir does not support node types {unknown}; it runs graphs from mixer_snn.nir_export")
    order = topological_order(graph)
    sources = {name: [src for src, dst in graph.edges if dst == name] for name in graph.nodes}
    states = {name: NeuronState(n, dt) for name, n in graph.nodes.items() if isinstance(n, (nir.LIF, nir.IF))}
    outputs = [name for name in order if isinstance(graph.nodes[name], nir.Output)]
    if len(outputs) != 1:
        raise UserError(f"run_nir needs exactly one Output node, the graph has {len(outputs)}")
    x0 = images.double()
    steps = []
    with torch.no_grad():
        for _ in range(T):
            values: dict[str, torch.Tensor] = {}
            for name in order:
                node = graph.nodes[name]
                if isinstance(node, nir.Input):
                    values[name] = x0
                    continue
                x = sum(values[src] for src in sources[name])
                values[name] = evaluate(node, x, states.get(name))
            steps.append(values[outputs[0]])
    return torch.stack(steps)
