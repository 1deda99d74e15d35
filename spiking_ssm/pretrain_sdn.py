"""The old name of ``python -m spiking_ssm.sdn.pretrain`` (the SDN's making and checking live in
:mod:`spiking_ssm.sdn`).

Kept so that commands written before the move keep working: it says so in one line on stderr, then runs the new
module as ``__main__`` (same arguments, output and exit status). It defines nothing to import.
"""

import runpy
import sys

if __name__ == "__main__":
    print("note: `python -m spiking_ssm.pretrain_sdn` is now `python -m spiking_ssm.sdn.pretrain`", file=sys.stderr)
    runpy.run_module("spiking_ssm.sdn.pretrain", run_name="__main__", alter_sys=True)
