"""Writers of tiny sequence data sets in the official on-disk formats, for tests.

Each writer returns a :class:`tests.data_fixtures.Fixture` whose ``root`` is what to pass as
``dataset.root``; ``n_val`` counts the validation items (the official eval/validation split).
Content is random but deterministic (``seed``).

    info = write_listops_tsv(tmp_path)
    data = ListOpsTSV(root=info.root)
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data_fixtures import Fixture, write_cifar10, write_mnist  # noqa: F401  (re-exported for the tests)

#: LRA-format expressions (with the pairing parentheses) and their values
LISTOPS_KNOWN = (
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),
    ("( ( ( ( ( ( [MAX 4 ) 3 ) ( ( ( [MIN 2 ) 3 ) ] ) ) 1 ) 0 ) ( ( ( ( ( ( [MED 1 ) 5 ) 8 ) 9 ) 2 ) ] ) ) ] )", 5),
    ("( ( ( ( [SM 5 ) 6 ) 7 ) ] )", 8),
    ("( ( ( ( ( [MED 1 ) 2 ) 7 ) 9 ) ] )", 4),
    ("( ( ( [MIN ( ( ( [MAX 3 ) 8 ) ] ) ) ( ( ( ( [SM 9 ) 9 ) 1 ) ] ) ) ] )", 8),
)


def write_listops_tsv(root: str | Path, n_train: int = 12, n_val: int = 6, n_test: int = 6, seed: int = 0) -> Fixture:
    """Write ``root/lra_release/listops-1000/basic_{train,val,test}.tsv``: header ``Source\\tTarget``,
    one LRA-string expression and its value per line (the known examples first, then generated ones)."""
    from snn_engine.data.sequence.listops import generate_listops, tree_lra_string, tree_value

    root = Path(root)
    folder = root / "lra_release" / "listops-1000"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        rows = list(LISTOPS_KNOWN)
        rows += [(tree_lra_string(t), tree_value(t)) for t in
                 generate_listops(max(0, n - len(rows)) or 1, seed, split, 5, 60, 4, 5)]
        lines = ["Source\tTarget"] + [f"{src}\t{label}" for src, label in rows[:n]]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    return Fixture(root, folder, 10, n_train, n_val)


def _words(rng: np.random.Generator, n: int) -> str:
    vocab = ["the", "film", "plot", "actor", "great", "awful", "é", "scene", "<br />", "ending"]
    return " ".join(rng.choice(vocab, n))


def write_imdb(root: str | Path, per_class: int = 3, seed: int = 0) -> Fixture:
    """Write ``root/aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt`` (UTF-8 reviews) plus ``imdb.vocab``."""
    root = Path(root)
    folder = root / "aclImdb"
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for polarity, ratings in (("neg", (1, 4)), ("pos", (7, 10))):
            sub = folder / split / polarity
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                text = _words(rng, int(rng.integers(5, 40)))
                (sub / f"{i}_{int(rng.integers(*ratings))}.txt").write_text(text, encoding="utf-8")
    (folder / "imdb.vocab").write_text("the\nfilm\n")
    return Fixture(root, folder, 2, 2 * per_class, 2 * per_class)


def write_aan(root: str | Path, n_train: int = 8, n_eval: int = 4, n_test: int = 4, seed: int = 0) -> Fixture:
    """Write ``root/lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv``: no header, tab-separated
    ``label, id1, id2, text1, text2`` with labels written as floats (``1.0``) and each text as a Python
    bytes literal (``b'...'``, non-ASCII escaped), as in the LRA release."""
    root = Path(root)
    folder = root / "lra_release" / "tsv_data"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("eval", n_eval), ("test", n_test)):
        rows = [f"{float(i % 2)}\tP{i:02d}-{split}a\tP{i:02d}-{split}b\t{aan_literal(_words(rng, 3 + i))}\t"
                f"{aan_literal(_words(rng, 9 - i % 5))}" for i in range(n)]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return Fixture(root, folder, 2, n_train, n_eval)


def aan_literal(text: str) -> str:
    """The AAN release's spelling of a text: ``repr`` of its UTF-8 bytes (``b'...'``)."""
    return repr(text.encode("utf-8"))


def write_pathfinder(root: str | Path, resolution: int = 32, n_dirs: int = 2, per_dir: int = 5,
                     difficulty: str = "curv_contour_length_14", seed: int = 0) -> Fixture:
    """Write ``root/lra_release/pathfinder{R}/<difficulty>/imgs/<i>/sample_<j>.png`` (8-bit grayscale) and
    ``metadata/<i>.npy`` (text despite the name: ``imgs/<i> sample_<j>.png <j> <label> <extra fields>``)."""
    root = Path(root)
    folder = root / "lra_release" / f"pathfinder{resolution}" / difficulty
    rng = np.random.default_rng(seed)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    for i in range(n_dirs):
        (folder / "imgs" / str(i)).mkdir(parents=True, exist_ok=True)
        lines = []
        for j in range(per_dir):
            pixels = (rng.random((resolution, resolution)) < 0.1).astype(np.uint8) * 255
            Image.fromarray(pixels, mode="L").save(folder / "imgs" / str(i) / f"sample_{j}.png")
            lines.append(f"imgs/{i} sample_{j}.png {j} {(i + j) % 2} 14 1.5 1 1 2 1 0")
        (folder / "metadata" / f"{i}.npy").write_text("\n".join(lines) + "\n")
    n = n_dirs * per_dir
    return Fixture(root, folder, 2, n, 0)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def write_speech_commands(root: str | Path, words: tuple[str, ...] = ("yes", "no", "zero"), per_word: int = 4,
                          n_samples: int = 1600, seed: int = 0) -> Fixture:
    """Write ``root/SpeechCommands/speech_commands_v0.02/<word>/<speaker>_nohash_<k>.wav`` (16-bit PCM mono
    16 kHz, ``n_samples`` long, so padded by the loader), ``validation_list.txt`` and ``testing_list.txt``
    (the first clip of each word in each), and a ``_background_noise_`` clip that must be ignored."""
    root = Path(root)
    folder = root / "SpeechCommands" / "speech_commands_v0.02"
    rng = np.random.default_rng(seed)
    val, test = [], []
    for word in words:
        (folder / word).mkdir(parents=True, exist_ok=True)
        for k in range(per_word):
            name = f"{word}/{k:08x}_nohash_{k}.wav"
            _write_wav(folder / name, rng.integers(-20000, 20000, n_samples))
            if k == 0:
                val.append(name)
            elif k == 1:
                test.append(name)
    (folder / "_background_noise_").mkdir(exist_ok=True)
    _write_wav(folder / "_background_noise_" / "white_noise.wav", rng.integers(-100, 100, 3200))
    (folder / "validation_list.txt").write_text("\n".join(val) + "\n")
    (folder / "testing_list.txt").write_text("\n".join(test) + "\n")
    return Fixture(root, folder, 35, len(words) * (per_word - 2), len(words))


def make_events(n: int = 500, duration_us: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """Synthetic DVS events in tonic's layout: structured ``x, y`` (int16), ``p`` (bool), ``t`` (int64, us), sorted."""
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=[("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
    events["x"], events["y"] = rng.integers(0, 128, n), rng.integers(0, 128, n)
    events["p"] = rng.integers(0, 2, n).astype(bool)
    events["t"] = np.sort(rng.integers(1000, 1000 + duration_us, n))
    return events


#: lighting conditions of the DVS128 Gesture sessions (folder ``user<NN>_<lighting>``)
DVS_LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")


def write_dvs_gesture(root: str | Path, users: int = 5, lightings: int = 2, n_events: int = 300,
                      duration_ms: int = 2500, seed: int = 0) -> Fixture:
    """Write tonic's extracted DVS128 Gesture below ``root`` (= tonic's ``save_to``), one split per folder:

    ``root/DVSGesture/ibmGesture{Train,Test}/user<NN>_<lighting>/<label>.npy`` for labels 0-10, each a
    ``float64 [n_events, 4]`` array of columns ``x, y, p, t`` (t in whole milliseconds from 7 ms, sorted,
    spanning up to ``duration_ms``), plus an empty ``ibmGesture{Train,Test}.tar.gz`` standing in for the archive.
    tonic reads the folders only when the archive exists and a split holds >= 100 ``.npy`` files, so the
    defaults write 5 users x 2 lightings x 11 labels = 110 recordings per split (train users 1-5, test 24-28).
    ``folder`` is ``root/DVSGesture``; ``n_train``/``n_val`` count recordings.
    """
    root = Path(root)
    folder = root / "DVSGesture"
    rng = np.random.default_rng(seed)
    for name, first_user in (("ibmGestureTrain", 1), ("ibmGestureTest", 24)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.tar.gz").write_bytes(b"")
        for user in range(first_user, first_user + users):
            for lighting in DVS_LIGHTINGS[:lightings]:
                session = folder / name / f"user{user:02d}_{lighting}"
                session.mkdir(parents=True, exist_ok=True)
                for label in range(11):
                    events = np.empty((n_events, 4))
                    events[:, 0:2] = rng.integers(0, 128, (n_events, 2))
                    events[:, 2] = rng.integers(0, 2, n_events)
                    events[:, 3] = np.sort(rng.integers(7, 7 + duration_ms, n_events))
                    np.save(session / f"{label}.npy", events)
    n = users * lightings * 11
    return Fixture(root, folder, 11, n, n)
