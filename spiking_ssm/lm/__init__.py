"""The SpikingSSM language model and its tools.

- :mod:`~spiking_ssm.lm.adaptive`: adaptive input embedding and projected adaptive softmax;
- :mod:`~spiking_ssm.lm.language_model`: :class:`~spiking_ssm.lm.language_model.SpikingSSMLanguageModel`, the model
  that ``model=spiking_ssm_lm`` trains;
- :mod:`~spiking_ssm.lm.streaming`: the same weights run token by token (recurrent state);
- :mod:`~spiking_ssm.lm.restore`: a trained model and its vocabulary from an engine checkpoint;
- :mod:`~spiking_ssm.lm.generate`: the sampling command (``python -m spiking_ssm.lm.generate``).

Nothing is imported here.
"""
