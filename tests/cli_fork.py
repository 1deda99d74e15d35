"""Run ``train.py`` / ``eval.py`` as the command line does, in a forked child of the test process.

Starting Python and importing torch, Hydra and SpikingJelly costs seconds per command; the fault suite runs dozens of
commands. A forked child already has those modules, and runs the script with :func:`runpy.run_path` as
``__main__`` with its own ``sys.argv``, working directory, environment and file descriptors 1 and 2 sent to files, so
the exit status, stdout and stderr are what the shell would see (an uncaught exception prints its traceback and exits
1, as the interpreter does). A ``script`` of the form ``-m package.module`` runs that module as ``python -m`` does
(:func:`runpy.run_module`). ``prepare`` runs in the child first (e.g. to make the N-th checkpoint rename kill the
process, or to cap the file size as a full disk would).
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]


def _child(script: Path, args: list[str], cwd: Path, env: dict, out: int, err: int, prepare) -> None:
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.chdir(cwd)
        os.environ.update(env)
        torch.set_num_threads(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if prepare is not None:
            prepare()
        module = str(script).partition("-m ")[2] if str(script).startswith("-m ") else None
        sys.argv = [module or str(script), *args]
        try:
            if module:
                sys.modules.pop(module, None)  # as in a fresh interpreter (runpy warns about a module already loaded)
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if not isinstance(done.code, int) and done.code is not None:
                print(done.code, file=sys.stderr)  # as the interpreter does with SystemExit("message")
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_forked(script: str, args: list[str], cwd: Path, env: dict | None = None, timeout: float = 600,
               prepare: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``python <script> <args>`` (``python -m module <args>`` for ``script="-m module"``) in ``cwd``, W&B off, as a
    forked child; the result as :func:`subprocess.run` gives it (``returncode`` is ``-signal`` when the child was
    killed)."""
    env = {"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(script if script.startswith("-m ") else REPO / script, args, Path(cwd), env, out.fileno(),
                   err.fileno(), prepare)
        deadline = __import__("time").monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if __import__("time").monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"{script} {args} ran over {timeout} s")
            __import__("time").sleep(0.05)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([script, *args], code, out.read(), err.read())
