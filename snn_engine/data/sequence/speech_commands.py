"""Speech Commands v0.02: 35 spoken words, raw 16 kHz audio as a sequence ``float32 [16000, 1]``.

Layout (the official archive, as torchaudio unpacks it): ``<root>/SpeechCommands/speech_commands_v0.02/``
holding one folder per word (``<word>/<speaker>_nohash_<n>.wav``, 16-bit PCM mono 16 kHz),
``validation_list.txt`` and ``testing_list.txt`` (one ``<word>/<file>.wav`` per line) and
``_background_noise_/`` (ignored). ``train`` is every clip in neither list. Clips shorter than one
second are zero-padded at the end; samples are scaled to ``[-1, 1)``. ``resolution=r`` keeps every r-th
sample (s4's evaluation at half resolution: r = 2, L = 8000). WAV files are read with the standard
``wave`` module, on access.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from snn_engine.data.sequence import SequenceData, positive_int
from snn_engine.errors import UserError

WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
         "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
         "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
SAMPLE_RATE = 16000


def read_wav(path: Path) -> np.ndarray:
    """A PCM WAV file -> ``float32 [n]`` (first channel) scaled to ``[-1, 1)``; :class:`UserError` if unreadable."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, frames = w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise UserError(f"cannot read WAV file {path} ({err}); restore the Speech Commands file") from None
    if width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        samples = np.frombuffer(frames, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise UserError(f"{path}: unsupported WAV sample width {width} bytes; expected 16-bit PCM")
    return samples[::channels] if channels > 1 else samples


class SpeechClips(Dataset):
    """Clips read on access: items ``(float32 [ceil(16000 / resolution), 1], label)``."""

    def __init__(self, files: list[Path], labels: list[int], resolution: int = 1) -> None:
        self.files, self.labels, self.resolution = files, labels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        audio = read_wav(self.files[index])[:SAMPLE_RATE]
        x = np.zeros(SAMPLE_RATE, dtype=np.float32)
        x[: audio.size] = audio
        return torch.from_numpy(x[:: self.resolution].copy()).unsqueeze(-1), self.labels[index]


class SpeechCommands(SequenceData):
    """Speech Commands v0.02, 35 classes (labels index :data:`WORDS`), raw waveform, d_input 1.

    Args:
        root: folder holding ``SpeechCommands/speech_commands_v0.02`` (or ``speech_commands_v0.02``, or
            the word folders and lists directly).
        resolution: keep every ``resolution``-th sample (1: L = 16000; 2: L = 8000).
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "Speech Commands v0.02"
    default_subdir = "SpeechCommands/speech_commands_v0.02"
    root_holds = "SpeechCommands/speech_commands_v0.02"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "speech_commands", num_classes: int = 35, resolution: int = 1, root=None,
                 batch_size: int = 16, num_workers: int = 0) -> None:
        self.resolution = positive_int(resolution, "dataset.resolution")
        super().__init__(name, num_classes, -(-SAMPLE_RATE // self.resolution), d_input=1, batch_size=batch_size,
                         num_workers=num_workers, root=root)
        if self.num_classes != len(WORDS):
            raise UserError(f"Speech Commands v0.02 has {len(WORDS)} classes; set dataset.num_classes={len(WORDS)}")
        self._lists: dict[str, list[tuple[Path, int]]] | None = None

    def folder(self) -> Path:
        """The folder with the word folders and the split lists (a :class:`UserError` when absent)."""
        root = self.require_root()
        for base in (root / "SpeechCommands" / "speech_commands_v0.02", root / "speech_commands_v0.02", root):
            if (base / "validation_list.txt").is_file() and (base / "testing_list.txt").is_file():
                return base
        raise self.missing(root, "<root>/SpeechCommands/speech_commands_v0.02/{<word>/*.wav, validation_list.txt, "
                                 "testing_list.txt}")

    def _split_lists(self) -> dict[str, list[tuple[Path, int]]]:
        if self._lists is None:
            base = self.folder()
            listed = {name: {line.strip().replace("\\", "/")
                             for line in (base / f"{name}_list.txt").read_text().splitlines() if line.strip()}
                      for name in ("validation", "testing")}
            out: dict[str, list[tuple[Path, int]]] = {"train": [], "val": [], "test": []}
            for label, word in enumerate(WORDS):
                folder = base / word
                if not folder.is_dir():
                    continue
                for path in sorted(folder.glob("*.wav")):
                    rel = f"{word}/{path.name}"
                    split = "val" if rel in listed["validation"] else "test" if rel in listed["testing"] else "train"
                    out[split].append((path, label))
            if not out["train"]:
                raise self.missing(base, f"word folders ({', '.join(WORDS[:3])}, ...) holding .wav clips")
            self._lists = out
        return self._lists

    def build(self, split: str) -> SpeechClips:
        items = self._split_lists()[split]
        return SpeechClips([p for p, _ in items], [y for _, y in items], self.resolution)
