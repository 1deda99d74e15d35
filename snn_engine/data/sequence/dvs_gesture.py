"""DVS128 Gesture (11 classes) through ``tonic``, binned into frames and read row by row as a sequence.

Each recording is cut into ``slice_ms`` slices (1.7 s), each slice binned into ``frame_ms`` frames
(25 ms -> 68 frames) of per-pixel event counts ``[T, 2, 128, 128]`` (tonic's ``to_frame_numpy``), reduced by a ``pool x pool`` max-pool
(2: 64 x 64) and over polarity (``"mean"``, ``"sum"``, or ``"stack"`` to keep both side by side), and
flattened so that each frame row is one step: ``float32 [T * 64, 64]`` = ``[4352, 64]`` with the defaults
(``"stack"``: ``[4352, 128]``). This follows the reference recipe (spiking_ssm_reference.md section 3).

The events come from ``tonic.datasets.DVSGesture(save_to=root)`` (structured arrays with fields
``x, y, p, t``, t in microseconds). ``tonic`` is the project's ``dvs`` extra (``uv sync --extra dvs``, or
``make setup``, which installs every extra) and is imported only when a split is built. Its layout on disk,
as tonic 1.7 reads it::

    <root>/DVSGesture/ibmGestureTrain.tar.gz        the downloaded archive (tonic only checks it exists)
    <root>/DVSGesture/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy
    <root>/DVSGesture/ibmGestureTest.tar.gz, ibmGestureTest/user24_led/...   (users 24-29)

one recording per ``<label>.npy`` (label 0-10 from the file name), an array ``[N, 4]`` of columns
``x, y, p, t`` with t in milliseconds (tonic multiplies it by 1000). tonic downloads again unless the
archive is present and the split folder holds at least 100 ``.npy`` files; here nothing is downloaded
unless ``download=True``. The validation split is the official test split.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from snn_engine.data.sequence import SequenceData, positive_int
from snn_engine.errors import UserError

SENSOR = (128, 128, 2)  # width, height, polarities (tonic's sensor_size order)
POLARITY_MODES = ("mean", "sum", "stack")


def events_to_frames(events: np.ndarray, n_frames: int, frame_us: float, t_start: float | None = None,
                     sensor_size: tuple[int, int, int] = SENSOR) -> np.ndarray:
    """Bin events into per-pixel counts with ``tonic.functional.to_frame_numpy`` (fixed time windows).

    Args:
        events: structured array with fields ``x, y, p, t`` (tonic's event layout; ``p`` in {0, 1} or bool).
        n_frames: number of frames T; events at or after ``t_start + T * frame_us`` are dropped.
        frame_us: frame length in the unit of ``t`` (microseconds).
        t_start: time of the first frame's start (default: the first event's time).
        sensor_size: ``(width, height, polarities)``.
    Returns:
        ``float32 [T, P, H, W]`` event counts (frames past the last event are zeros).
    """
    from tonic.functional import to_frame_numpy  # the dvs extra; imported here, when frames are made

    width, height, pols = sensor_size
    frames = np.zeros((n_frames, pols, height, width), dtype=np.float32)
    if len(events) == 0:
        return frames
    t = events["t"]
    if np.any(t[1:] < t[:-1]):  # tonic slices with searchsorted: time order
        events = events[np.argsort(t, kind="stable")]
    start = float(t.min()) if t_start is None else float(t_start)
    binned = to_frame_numpy(events, sensor_size, time_window=frame_us, start_time=start,
                            end_time=start + n_frames * frame_us, include_incomplete=True)[:n_frames]
    frames[: len(binned)] = binned
    return frames


def frames_to_sequence(frames: np.ndarray | torch.Tensor, pool: int = 2, polarity: str = "mean") -> torch.Tensor:
    """``[T, P, H, W]`` frames -> ``float32 [T * H', W']`` rows (or ``[T * H', P * W']`` for ``"stack"``).

    A ``pool x pool`` max-pool (``pool=1``: none) gives ``H' = H // pool``, ``W' = W // pool``; polarity is
    averaged, summed, or stacked along the features (polarity 0's row, then polarity 1's).
    """
    if polarity not in POLARITY_MODES:
        raise UserError(f"dataset.polarity must be one of {', '.join(POLARITY_MODES)}, got {polarity!r}")
    x = torch.as_tensor(frames, dtype=torch.float32)
    if pool > 1:
        x = torch.nn.functional.max_pool2d(x, pool)
    t, p, h, w = x.shape
    if polarity == "mean":
        return x.mean(1).reshape(t * h, w)
    if polarity == "sum":
        return x.sum(1).reshape(t * h, w)
    return x.permute(0, 2, 1, 3).reshape(t * h, p * w)


class GestureSlices(Dataset):
    """Slices of tonic recordings as sequences: item ``k * n_rec + r`` is slice ``k`` of recording ``r``."""

    def __init__(self, recordings, slices_per_sample: int, slice_us: float, frame_us: float, n_frames: int,
                 pool: int, polarity: str) -> None:
        self.recordings, self.slices = recordings, slices_per_sample
        self.slice_us, self.frame_us, self.n_frames = slice_us, frame_us, n_frames
        self.pool, self.polarity = pool, polarity

    def __len__(self) -> int:
        return len(self.recordings) * self.slices

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        k, r = divmod(index, len(self.recordings))
        events, label = self.recordings[r]
        start = (float(events["t"].min()) if len(events) else 0.0) + k * self.slice_us
        frames = events_to_frames(events, self.n_frames, self.frame_us, start)
        return frames_to_sequence(frames, self.pool, self.polarity), int(label)


class DVSGesture(SequenceData):
    """DVS128 Gesture as row sequences (needs ``tonic``, the ``dvs`` extra: ``uv sync --extra dvs``).

    Args:
        root: the folder given to tonic as ``save_to`` (holding ``DVSGesture/ibmGestureTrain`` and
            ``DVSGesture/ibmGestureTest``).
        slice_ms, frame_ms: slice and frame lengths (1700, 25 -> 68 frames).
        slices_per_sample: consecutive slices taken from each recording (slices past its end are mostly empty).
        pool: max-pool factor of the 128 x 128 frames; polarity: ``mean``, ``sum`` or ``stack``.
        download: let tonic fetch the data when missing.
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "DVS128 Gesture"
    default_subdir = "DVSGesture"
    root_holds = "DVSGesture/ibmGestureTrain"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "dvs128_gesture", num_classes: int = 11, slice_ms: float = 1700.0,
                 frame_ms: float = 25.0, slices_per_sample: int = 1, pool: int = 2, polarity: str = "mean",
                 root=None, download: bool = False, batch_size: int = 32, num_workers: int = 0) -> None:
        if float(frame_ms) <= 0 or float(slice_ms) < float(frame_ms):
            raise UserError(f"dataset.frame_ms must be > 0 and <= dataset.slice_ms, got {frame_ms}, {slice_ms}")
        if polarity not in POLARITY_MODES:
            raise UserError(f"dataset.polarity must be one of {', '.join(POLARITY_MODES)}, got {polarity!r}")
        self.pool = positive_int(pool, "dataset.pool")
        if SENSOR[0] % self.pool:
            raise UserError(f"dataset.pool must divide 128, got {pool}")
        self.slice_us, self.frame_us = float(slice_ms) * 1000.0, float(frame_ms) * 1000.0
        self.n_frames = math.ceil(self.slice_us / self.frame_us - 1e-9)
        side = SENSOR[0] // self.pool
        super().__init__(name, num_classes, self.n_frames * side, d_input=side * (2 if polarity == "stack" else 1),
                         batch_size=batch_size, num_workers=num_workers, root=root)
        if self.num_classes != 11:
            raise UserError(f"DVS128 Gesture has 11 classes; set dataset.num_classes=11, got {num_classes}")
        self.slices_per_sample = positive_int(slices_per_sample, "dataset.slices_per_sample")
        self.polarity, self.download = polarity, bool(download)

    def build(self, split: str) -> GestureSlices:
        try:
            import tonic
        except ImportError:
            raise UserError("DVS128 Gesture is read through the tonic package, which is not installed; install the "
                            "project's dvs extra (`uv sync --extra dvs`, or `make setup`, which installs every extra) "
                            "or choose another dataset=") from None
        root = self.require_root()
        name = "ibmGestureTrain" if split == "train" else "ibmGestureTest"
        refusal = self.missing(root / "DVSGesture" / name,
                               f"tonic's extracted {name}/user*/<label>.npy (at least 100 recordings) beside "
                               f"{name}.tar.gz (an empty file of that name will do); or set dataset.download=true "
                               "to let tonic fetch them")
        recordings = open_tonic_split(tonic, root, split == "train", self.download, refusal)
        return GestureSlices(recordings, self.slices_per_sample, self.slice_us, self.frame_us, self.n_frames,
                             self.pool, self.polarity)


def open_tonic_split(tonic, root, train: bool, download: bool, refusal: Exception):
    """tonic's DVSGesture reader of one split below ``root``, raising ``refusal`` where tonic would download
    and ``download`` is false (tonic decides what counts as present; see the module docstring).

    Items are ``(events, label)``: structured ``x, y`` (int16), ``p`` (bool), ``t`` (int64, us) and an int.
    """

    class DVSGesture(tonic.datasets.DVSGesture):  # tonic keeps the data below <save_to>/<class name>
        def download(self) -> None:
            if not download:
                raise refusal
            super().download()

    reader = DVSGesture(save_to=str(root), train=train)
    reader.__class__ = tonic.datasets.DVSGesture  # drop the local guard class so the split pickles (workers)
    # tonic lists recordings in os.walk order, which depends on the file system: sort them by path so a seeded
    # shuffle gives the same batches on every machine
    order = sorted(range(len(reader.data)), key=lambda i: reader.data[i])
    for name in ("data", "targets", "users", "lighting"):
        values = getattr(reader, name, None)
        if isinstance(values, list) and len(values) == len(order):
            setattr(reader, name, [values[i] for i in order])
    return reader
