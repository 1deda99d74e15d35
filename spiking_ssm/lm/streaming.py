"""Token-by-token (recurrent) inference of a trained :class:`~spiking_ssm.lm.language_model.SpikingSSMLanguageModel`.

Per token and layer (eval mode, :mod:`spiking_ssm.streaming`): the diagonal SSM state ``x <- Abar x + Bbar u``,
the exact LIF soma (one membrane per channel) and the 1x1 mixing conv + GLU on the spikes, so memory stays constant
per token however long the text. The ``sdn`` soma, whose parallel training form predicts the membrane with the SDN,
runs here as the exact LIF it emulates (the reference's deployment); ``lif`` runs exactly as in the parallel
forward.

Every step also counts what the network did for that token: spikes of all somas and the accumulates (ACs) of the
mixing convs (each spike meets the 2H weights of its input channel): the SpikingSSM paper's energy convention
(``snn_engine.measure.ops``, ``convention="ssm_paper"``: E_AC = 0.9 pJ; its dense ANN twin does 2H * H MACs per layer at
E_MAC = 4.6 pJ).
"""

from __future__ import annotations

import torch

from snn_engine.errors import UserError
from snn_engine.measure.ops import E_AC_PJ, E_MAC_PJ
from spiking_ssm.lm.language_model import SpikingSSMLanguageModel
from spiking_ssm.streaming import LIFConstants, StreamingBlock


class StreamingLanguageModel:
    """``reset()``, then ``step(token_ids [B]) -> next-token log-probs [B, V]`` per position.

    ``prefill(tokens [B, L])`` steps through a whole prompt and returns the distribution after its last token.
    ``stats()`` reports spikes and synaptic operations per token (per sequence of the batch) since ``reset()``.
    """

    def __init__(self, model: SpikingSSMLanguageModel, lif: LIFConstants | None = None):
        if model.training:
            raise UserError("streaming inference needs a trained model in eval mode: call model.eval() first")
        self.model = model
        self.blocks = [StreamingBlock(block, lif) for block in model.backbone.blocks]
        self.fan_out = [block.layer.output_linear.out_channels for block in model.backbone.blocks]
        self.somas = sum(block.layer.d_model for block in model.backbone.blocks)
        self.reset()

    def reset(self) -> None:
        """Forget the text so far: SSM states and membranes back to rest, counters to 0."""
        for block in self.blocks:
            block.reset()
        self.batch = 0
        self.last_hidden: torch.Tensor | None = None
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the statistics only (the text so far is kept), e.g. to count the decoding after a prompt."""
        self.tokens = 0  # positions stepped (per sequence)
        self._spikes = 0.0  # tensors after the first step (summed without host syncs)
        self._acs = 0.0

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence ([B] int64); return log p(next token) [B, V]."""
        token_ids = token_ids.reshape(-1).long()
        if self.batch and token_ids.shape[0] != self.batch:
            raise ValueError(f"batch changed from {self.batch} to {token_ids.shape[0]} without reset()")
        if bool(((token_ids < 0) | (token_ids >= self.model.vocab_size)).any()):
            raise ValueError(f"token ids must lie in [0, {self.model.vocab_size})")
        h = self.model.embed(token_ids.unsqueeze(1))[:, 0]  # [B, H]
        for block, fan_out in zip(self.blocks, self.fan_out):
            h = block.step(h)
            spikes = block.layer.last_spikes.sum()
            self._spikes = self._spikes + spikes
            self._acs = self._acs + spikes * fan_out
        self.tokens += 1
        self.batch = token_ids.shape[0]
        self.last_hidden = h
        return self.model.log_probs_last(h)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Step through tokens [B, L] (L >= 1); return the log-probs after the last one [B, V]."""
        if tokens.ndim != 2 or tokens.shape[1] < 1:
            raise ValueError(f"prefill expects token ids [B, L] with L >= 1, got {tuple(tokens.shape)}")
        for t in range(tokens.shape[1]):
            out = self.step(tokens[:, t])
        return out

    def stats(self) -> dict[str, float]:
        """Per token and sequence since ``reset()``: spikes, firing rate over all somas, mixing-conv ACs and
        their energy (pJ), beside the dense ANN twin of the same layers (MACs at E_MAC)."""
        per = max(self.tokens * max(self.batch, 1), 1)
        spikes = float(self._spikes) / per
        acs = float(self._acs) / per
        ann_macs = float(sum(f * block.layer.layer.d_model for f, block in zip(self.fan_out, self.blocks)))
        return {"tokens": self.tokens, "spikes_per_token": spikes, "firing_rate": spikes / self.somas,
                "somas": self.somas, "ac_per_token": acs, "energy_pj_per_token": acs * E_AC_PJ,
                "ann_mac_per_token": ann_macs, "ann_energy_pj_per_token": ann_macs * E_MAC_PJ}
