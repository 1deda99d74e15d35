"""``argparse`` for the project's ``python -m`` tools: no silent abbreviations, one-line errors with suggestions.

Plain ``argparse`` takes ``--epoch 3`` for ``--epochs 3`` (prefix matching) and answers a typo with its usage block
and ``unrecognized arguments``. :class:`StrictArgumentParser` refuses prefixes and prints one line, naming the
closest known option: ``error: unknown option --finetune-epoch (did you mean --finetune-epochs?); see --help``.
"""

from __future__ import annotations

import argparse
import difflib
import sys


class StrictArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` without abbreviations whose errors are one line on stderr (exit 2)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def options(self) -> list[str]:
        return [flag for action in self._actions for flag in action.option_strings]

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            unknown = [a for a in message.split(": ", 1)[1].split() if a.startswith("-")]
            parts = []
            for arg in unknown or message.split(": ", 1)[1].split()[:1]:
                close = difflib.get_close_matches(arg.split("=")[0], self.options(), n=1, cutoff=0.7)
                parts.append(f"{arg}" + (f" (did you mean {close[0]}?)" if close else ""))
            message = "unknown option " + ", ".join(parts)
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)
