"""Measurement: metrics and firing rates, operation counts and energy views, probes, figures, the evaluation report, kernel usage, NIR replay, NeuroBench."""
