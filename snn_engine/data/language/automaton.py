"""Finite-state word sources whose state is known from the words (unifilar sources), with their exact entropy.

A source has states ``s`` and, in each state, a distribution ``p(w | s)`` over words; emitting ``w`` moves to
the state ``next(s, w)``, a *function* of the state and the word. Starting from a known state, the state
before every word is therefore a function of the words before it, so
``H(w_t | w_<t) = H(w_t | s_t)`` and the entropy rate (nats per token) is exact::

    h = sum_s pi(s) * H(p(. | s)),      H(p) = -sum_w p(w) log p(w)

with ``pi`` the stationary distribution of the state chain ``P[s, s'] = sum_{w: next(s,w)=s'} p(w | s)``.
The long-run token frequencies are ``f(w) = sum_s pi(s) p(w | s)``.

    source = UnifilarSource(start, emissions, words)   # emissions(state) -> [(prob, word, next_state), ...]
    ids = source.sample(10_000, np.random.default_rng(0))  # int64 [10000]
    -source.log_probs(ids).mean()                          # ~ source.entropy_rate
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

Emissions = Callable[[Hashable], Iterable[tuple[float, str, Hashable]]]


class UnifilarSource:
    """A unifilar finite-state source enumerated from its start state.

    Args:
        start: the start state (any hashable label).
        emissions: ``state -> [(prob, word, next_state), ...]``; probabilities of a state sum to 1, a word may
            repeat only with the same next state (its probabilities add up).
        words: the vocabulary in id order; every emitted word must be in it.
    Attributes:
        states: the reachable state labels (``states[0]`` is ``start``), S of them.
        words: the V words.
        emit: ``float64 [S, V]`` ``p(w | s)``.
        next_state: ``int64 [S, V]`` the index of ``next(s, w)``, -1 where ``p(w | s) = 0``.
        stationary: ``float64 [S]`` ``pi``.
        entropy_rate: ``h`` in nats per token.
        word_frequencies: ``float64 [V]`` the long-run token distribution ``f``.
    """

    def __init__(self, start: Hashable, emissions: Emissions, words: Sequence[str]) -> None:
        self.words = list(words)
        word_id = {w: i for i, w in enumerate(self.words)}
        index: dict[Hashable, int] = {start: 0}
        self.states: list[Hashable] = [start]
        rows: list[dict[int, tuple[float, Hashable]]] = []
        while len(rows) < len(self.states):  # breadth-first over the reachable states
            state = self.states[len(rows)]
            row: dict[int, tuple[float, Hashable]] = {}
            for prob, word, nxt in emissions(state):
                if word not in word_id:
                    raise ValueError(f"state {state!r} emits {word!r}, which is not in the vocabulary")
                if prob <= 0:
                    raise ValueError(f"state {state!r} gives {word!r} probability {prob} (must be > 0)")
                w = word_id[word]
                if w in row and row[w][1] != nxt:
                    raise ValueError(f"state {state!r}: {word!r} leads to two states (the source must be unifilar)")
                row[w] = (row.get(w, (0.0, nxt))[0] + prob, nxt)
                if nxt not in index:
                    index[nxt] = len(self.states)
                    self.states.append(nxt)
            total = sum(p for p, _ in row.values())
            if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
                raise ValueError(f"the probabilities of state {state!r} sum to {total}, not 1")
            rows.append(row)
        S, V = len(self.states), len(self.words)
        self.emit = np.zeros((S, V))
        self.next_state = np.full((S, V), -1, dtype=np.int64)
        for s, row in enumerate(rows):
            for w, (p, nxt) in row.items():
                self.emit[s, w], self.next_state[s, w] = p, index[nxt]
        self.emit /= self.emit.sum(1, keepdims=True)
        self.stationary = stationary_distribution(self.transition_matrix())
        logs = np.log(np.where(self.emit > 0, self.emit, 1.0))
        self.state_entropy = -(self.emit * logs).sum(1)
        self.entropy_rate = float(self.stationary @ self.state_entropy)
        self.word_frequencies = self.stationary @ self.emit
        # per-state tables for the samplers and scorers
        self._cum = [np.cumsum(self.emit[s, ws]).tolist() for s, ws in enumerate(self._support())]
        self._ids = [ws.tolist() for ws in self._support()]
        self._nxt = [self.next_state[s, ws].tolist() for s, ws in enumerate(self._support())]
        self._logp = np.log(np.where(self.emit > 0, self.emit, np.nan))

    def _support(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.emit[s]) for s in range(len(self.states))]

    def transition_matrix(self) -> np.ndarray:
        """``float64 [S, S]`` state-to-state probabilities."""
        S = len(self.states)
        P = np.zeros((S, S))
        for s in range(S):
            ws = np.flatnonzero(self.emit[s])
            np.add.at(P[s], self.next_state[s, ws], self.emit[s, ws])
        return P

    def sample(self, n: int, rng: np.random.Generator, state: int = 0) -> np.ndarray:
        """``int64 [n]`` word ids drawn from ``state`` (default: the start state); deterministic given ``rng``."""
        out = np.empty(n, dtype=np.int64)
        cum, ids, nxt = self._cum, self._ids, self._nxt
        for t, u in enumerate(rng.random(n).tolist()):
            c = cum[state]
            i = min(bisect_right(c, u), len(c) - 1)  # guards the last cumulative sum rounding below 1
            out[t] = ids[state][i]
            state = nxt[state][i]
        return out

    def log_probs(self, ids: Sequence[int] | np.ndarray, state: int = 0) -> np.ndarray:
        """``float64 [n]`` ``log p(w_t | w_<t)`` of a stream that starts in ``state`` (the exact model: the state
        is followed from the words). A ``ValueError`` at the first impossible word."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty(len(ids))
        for t, w in enumerate(ids.tolist()):
            out[t] = self._logp[state, w]
            if self.next_state[state, w] < 0:
                raise ValueError(f"word {self.words[w]!r} at position {t} is impossible in state "
                                 f"{self.states[state]!r}")
            state = int(self.next_state[state, w])
        return out

    def window_nll(self, ids: np.ndarray, length: int, drop_last: bool) -> tuple[float, int]:
        """The loss of the best predictor that sees only the current sample: the stream cut as
        :class:`~snn_engine.data.language.stream.TokenStream` does (``length`` inputs, next-token targets),
        each sample read by exact Bayesian filtering of the state from the prior ``pi`` at its start.

        Returns:
            total nats over the predicted tokens, and their number.
        """
        ids = np.asarray(ids, dtype=np.int64)
        L, predicted = int(length), max(len(ids) - 1, 0)
        B = predicted // L if drop_last else -(-predicted // L)
        if B == 0:
            return 0.0, 0
        windows = np.full((B, L + 1), -1, dtype=np.int64)  # [B, L+1]: inputs then the last target
        for i in range(B):
            chunk = ids[i * L: i * L + L + 1]
            windows[i, : len(chunk)] = chunk
        S = len(self.states)
        belief = np.tile(self.stationary, (B, 1))  # [B, S] p(state before token t | tokens before t)
        rows = np.arange(B)[:, None] * S
        total, count = 0.0, 0
        for t in range(L + 1):
            x = windows[:, t]
            valid = x >= 0
            if not valid.any():
                break
            xv = np.where(valid, x, 0)
            joint = belief * self.emit[:, xv].T  # [B, S] p(state, token t)
            p = joint.sum(1)
            if (p[valid] <= 0).any():
                raise ValueError("the stream has a word the source cannot emit")
            if t > 0:
                total -= float(np.log(p[valid]).sum())
                count += int(valid.sum())
            dest = self.next_state[:, xv].T.clip(min=0) + rows  # [B, S] flat index of the next state
            moved = np.bincount(dest.ravel(), weights=joint.ravel(), minlength=B * S).reshape(B, S)
            belief = np.where(valid[:, None], moved / np.where(valid, p, 1.0)[:, None], belief)
        return total, count


def stationary_distribution(P: np.ndarray) -> np.ndarray:
    """``float64 [S]`` the ``pi`` with ``pi P = pi`` and ``sum(pi) = 1`` of an irreducible chain ``P [S, S]``."""
    S = P.shape[0]
    A = P.T - np.eye(S)
    A[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    b = np.zeros(S)
    b[-1] = 1.0
    pi = np.linalg.solve(A, b)
    if (pi < -1e-12).any() or not np.allclose(pi @ P, pi, atol=1e-12):
        raise ValueError("the state chain has no unique stationary distribution")
    return pi.clip(min=0.0) / pi.clip(min=0.0).sum()
