"""The largest integers the project hands to torch, NumPy and Python's ``random``, shared by every command's checks.

An integer beyond these never gets as far as torch (whose message would be a traceback such as ``Overflow when
unpacking long``): ``train.py``/``eval.py`` refuse it in :mod:`snn_engine.protection.config_check`, the ``python -m`` tools in
their argument checks, each with one line naming the setting and its range.

- :data:`SEED_MAX`: seeds are 32-bit. NumPy takes no more, and the engine derives further seeds from them (the data
  order of epoch ``e`` is seeded with ``seed * 1_000_003 + 1_009 e + rank``), which must stay below torch's 2**64;
- :data:`SIZE_MAX`: counts and sizes (batch size, time steps, widths, tokens to generate) fit a signed 32-bit
  integer, the index type of many torch kernels; a size that fits but exceeds the memory is torch's own error;
- :data:`INT_MAX`: any other integer of a config fits a signed 64-bit integer (torch's ``int64``).
"""

from __future__ import annotations

SEED_MAX = 2**32 - 1
SIZE_MAX = 2**31 - 1
INT_MAX = 2**63 - 1
INT_MIN = -(2**63)


def out_of_range(value: int, low: int, high: int) -> str | None:
    """``"a whole number in [low, high]"`` when ``value`` lies outside it, else ``None``."""
    return None if low <= value <= high else f"a whole number in [{low}, {high}]"
