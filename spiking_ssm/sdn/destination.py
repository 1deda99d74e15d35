"""Where ``python -m spiking_ssm.sdn.pretrain`` writes its ``.pt`` and ``.json``, decided and checked before training.

- default: a new run folder ``<output>/sdn/<time>_<6 hex>/sdn_tau<tau>.pt``, where ``<output>`` is ``$SNN_OUTPUT`` or
  ``outputs`` (as ``paths.output`` of ``train.py``), made exclusively (:func:`snn_engine.protection.run_folder.new_folder`), so
  two runs never share one;
- ``--out PATH.pt``: that file; its folder must be writable (made if missing), ``PATH.pt`` and ``PATH.json`` must not
  exist unless ``--overwrite``, and it may not lie in the packaged weights' folder;
- ``--replace-packaged``: the packaged weights for ``--tau`` (``spiking_ssm/weights/sdn_tau<tau>.pt``, which every
  ``neuron=sdn`` run with that tau loads); the only way to replace them.

Both files are written into a hidden folder beside the target and renamed into place at the end (:func:`commit`),
so a failed or interrupted run leaves the earlier files as they were, and folders made for it are removed when empty
(:func:`abandon`). The file keeps its final name while torch writes it, so its bytes (and sha256) do not depend on
where it was written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from snn_engine.protection import run_folder
from snn_engine.errors import UserError
from snn_engine.protection.file_errors import file_in_the_way, why
from spiking_ssm.sdn.packaged import WEIGHTS_DIR, packaged_weights


@dataclass
class Destination:
    """The final ``.pt`` path, the hidden folder the files are written into, and the folders made for them."""

    out: Path
    staging: Path
    made: list[Path] = field(default_factory=list)

    @property
    def record(self) -> Path:
        return self.out.with_suffix(".json")

    def staged(self, path: Path) -> Path:
        """Where ``path`` (the ``.pt`` or ``.json``) is written before :func:`commit` moves it to ``path``."""
        return self.staging / path.name


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix != ".pt":
        raise UserError(f"--out {out} must name a .pt file (its record is written beside it as .json)")
    if _inside(out, WEIGHTS_DIR):
        raise UserError(f"--out {out} is in {WEIGHTS_DIR}, the packaged SDNs that neuron=sdn runs load; pass "
                        "--replace-packaged to replace the packaged weights of --tau, or choose another path")
    blocker = file_in_the_way(out.parent)
    if blocker is not None:
        raise UserError(f"--out {out}: {blocker} is a file, not a directory; choose another path")
    for path in (out, out.with_suffix(".json")):
        if path.is_dir():
            raise UserError(f"--out {out}: {path} is a directory; choose another path")
        if path.exists() and not overwrite:
            what = f"--out {out} exists" if path == out else f"the record of --out {out}, {path}, exists"
            raise UserError(f"{what}; pass --overwrite to replace it, or choose another path")


def _stage(out: Path, made: list[Path]) -> Destination:
    """Make ``out``'s folder (recording what was made) and the hidden staging folder in it: proof it is writable."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", suffix=".tmp", dir=out.parent))
    except OSError as error:
        run_folder.remove_empty(missing + made)
        raise UserError(f"cannot write {out}: {why(error, out.parent)}; choose a writable --out") from error
    return Destination(out, staging, missing + made)


def choose(args) -> Destination:
    """The destination of this run (see the module docstring), checked and staged; a :class:`UserError` if not."""
    name = f"sdn_tau{float(args.tau):g}.pt"
    if args.replace_packaged:
        if args.out is not None:
            raise UserError("--replace-packaged writes the packaged weights; drop --out (or drop --replace-packaged)")
        return _stage(packaged_weights(args.tau), [])
    if args.out is not None:
        _check_out(args.out, args.overwrite)
        return _stage(args.out, [])
    output = Path(os.environ.get("SNN_OUTPUT") or "outputs")
    try:
        folder, made = run_folder.new_folder(output / "sdn", f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    except OSError as error:
        raise UserError(f"cannot create a run folder in {output / 'sdn'}: {why(error, output / 'sdn')}; set "
                        "SNN_OUTPUT to a writable folder or pass --out PATH.pt") from error
    return _stage(folder / name, [folder, *made])


def commit(destination: Destination) -> None:
    """Move the staged ``.pt`` and ``.json`` into place (``.pt`` first) and remove the staging folder."""
    for path in (destination.out, destination.record):
        os.replace(destination.staged(path), path)
    destination.staging.rmdir()


def abandon(destination: Destination) -> None:
    """After a failed run: remove the staged files and the folders made for this run (when empty)."""
    shutil.rmtree(destination.staging, ignore_errors=True)
    run_folder.remove_empty(destination.made)
