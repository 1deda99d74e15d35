"""The Surrogate Dynamic Network (SDN): the network the ``sdn`` soma runs, and how it is made and checked.

- :mod:`~spiking_ssm.sdn.network`: the SDN (training form) and the reduced 153-number form the soma loads;
- :mod:`~spiking_ssm.sdn.packaged`: where the packaged weights (``spiking_ssm/weights/``) live, per ``tau``;
- :mod:`~spiking_ssm.sdn.lif_traces`: exact LIF membranes and spikes, the SDN's targets;
- :mod:`~spiking_ssm.sdn.data`: the training mixture of input currents;
- :mod:`~spiking_ssm.sdn.training`: losses and the training stages;
- :mod:`~spiking_ssm.sdn.pretrain`: the pre-training command (``python -m spiking_ssm.sdn.pretrain``);
- :mod:`~spiking_ssm.sdn.layer_currents`: soma currents recorded from real SpikingSSM layers;
- :mod:`~spiking_ssm.sdn.agreement`: the spike-agreement suite (``python -m spiking_ssm.sdn.agreement``).

Training runs import only ``network`` and ``packaged`` (through :mod:`spiking_ssm.somas`); the rest is the
making and measuring of the packaged weights. Nothing is imported here, so ``import spiking_ssm.sdn.network``
stays light.
"""
