"""The training loop: trainer, optimiser and schedules, losses, distribution, compilation, recomputation, spike memory, evaluation passes."""
