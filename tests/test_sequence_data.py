"""Sequence data sets: the embedded ListOps generator and shapes sequences, and every real loader on a tiny
fixture written in the official on-disk format (tests/seq_fixtures.py); real MNIST when it is present."""

from __future__ import annotations

import ast
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from snn_engine.data.sequence import (
    DVSGesture, LRAImage, LRAPathfinder, LRARetrieval, LRAText, ListOpsGenerated, ListOpsTSV, PadCollate,
    SeqMNIST, SeqShapes, SpeechCommands, evaluate_listops, pad_sequences)
from snn_engine.data.sequence.dvs_gesture import GestureSlices, events_to_frames, frames_to_sequence
from snn_engine.data.sequence.lra import aan_text
from snn_engine.data.sequence.listops import LISTOPS_VOCAB, tokenize, tree_lra_string, tree_tokens, tree_value
from snn_engine.errors import UserError
from tests.conftest import SHARED_DATA
from tests.seq_fixtures import (
    LISTOPS_KNOWN, make_events, write_aan, write_cifar10, write_imdb, write_listops_tsv, write_mnist,
    write_dvs_gesture, write_pathfinder, write_speech_commands)

ID_TO_TOKEN = {i: t for t, i in LISTOPS_VOCAB.items()}


def decode(ids: torch.Tensor) -> list[str]:
    return [ID_TO_TOKEN[int(i)] for i in ids if int(i) > 2]


def check_interface(data, token: bool) -> None:
    for key in ("name", "num_classes", "batch_size", "num_workers", "seq_len", "d_input"):
        assert hasattr(data, key), key
    assert data.mixup_fn() is None
    if token:
        assert data.d_input is None and data.vocab_size >= 3 and isinstance(data.collate_fn(), PadCollate)
    else:
        assert data.d_input >= 1


# ------------------------------------------------------------------------------------------ ListOps
@pytest.mark.parametrize("source,label", LISTOPS_KNOWN)
def test_listops_evaluator_on_known_examples(source, label):
    assert evaluate_listops(source) == label
    assert evaluate_listops(tokenize(source)) == label  # without the pairing parentheses


@pytest.mark.parametrize("bad", ["[MAX 1 2", "1 2", "[MAX 1 ] ]", "[FOO 1 ]", ""])
def test_listops_evaluator_rejects_malformed(bad):
    with pytest.raises(ValueError):
        evaluate_listops(bad)


@pytest.fixture(scope="module")
def listops_small():
    return ListOpsGenerated(train_size=400, val_size=200, min_length=5, max_length=60, max_depth=4, max_args=5, seed=3)


def test_listops_generated_is_deterministic_and_labelled_correctly(listops_small):
    data = listops_small
    check_interface(data, token=True)
    assert data.vocab_size == 18 and data.seq_len == 60 and data.num_classes == 10
    train, val = data.train_set(), data.val_set()
    assert len(train) == 400 and len(val) == 200
    again = ListOpsGenerated(train_size=400, val_size=200, min_length=5, max_length=60, max_depth=4, max_args=5, seed=3)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(train, again.train_set()))
    other = ListOpsGenerated(train_size=400, val_size=200, min_length=5, max_length=60, max_depth=4, max_args=5, seed=4)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(train, other.train_set()))
    seen = {tuple(x.tolist()) for x, _ in train}
    assert len(seen) == len(train) and not seen & {tuple(x.tolist()) for x, _ in val}  # distinct, disjoint splits
    for x, y in list(train) + list(val):
        assert x.dtype == torch.long and int(x[-1]) == 2 and 5 < len(x) - 1 < 60
        assert evaluate_listops(decode(x)) == y
    assert len({y for _, y in train}) == 10
    for tree in data.trees("train")[:50]:  # the LRA TSV text of a tree tokenises back to it
        assert tokenize(tree_lra_string(tree)) == tree_tokens(tree)
        assert evaluate_listops(tree_lra_string(tree)) == tree_value(tree)


def test_listops_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="dataset.num_classes"):
        ListOpsGenerated(num_classes=5)
    with pytest.raises(UserError, match="dataset.max_args"):
        ListOpsGenerated(max_args=1)


def test_small_gru_learns_listops_above_chance():
    torch.manual_seed(0)
    data = ListOpsGenerated(train_size=2000, val_size=400, min_length=4, max_length=50, max_depth=3, max_args=5, seed=0)
    train, val = data.train_set(), data.val_set()
    majority = max(np.bincount(val.labels, minlength=10)) / len(val)
    collate = PadCollate(0, with_lengths=True)

    class GRU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(data.vocab_size, 32, padding_idx=0)
            self.rnn = torch.nn.GRU(32, 64, batch_first=True)
            self.head = torch.nn.Linear(64, 10)

        def forward(self, x, lengths):
            out, _ = self.rnn(self.emb(x))
            return self.head(out[torch.arange(len(x)), lengths - 1])

    model = GRU()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    loader = DataLoader(train, batch_size=50, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start, steps = time.time(), 0
        while steps < 80 and time.time() - start < 20:
            for (x, lengths), y in loader:
                loss = torch.nn.functional.cross_entropy(model(x, lengths), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        (x, lengths), y = collate([val[i] for i in range(len(val))])
        with torch.no_grad():
            acc = (model(x, lengths).argmax(1) == y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    print(f"listops GRU: acc {acc:.3f} majority {majority:.3f} steps {steps} {time.time() - start:.1f}s")
    assert acc > majority + 0.05, (acc, majority, steps)


def test_listops_tsv_fixture(tmp_path):
    info = write_listops_tsv(tmp_path)
    data = ListOpsTSV(root=info.root, batch_size=4)
    check_interface(data, token=True)
    train, val, test = data.train_set(), data.val_set(), data.test_set()
    assert (len(train), len(val), len(test)) == (12, 6, 6)
    for x, y in list(train) + list(val) + list(test):
        assert evaluate_listops(decode(x)) == y
    assert [y for _, y in train][: len(LISTOPS_KNOWN)] == [y for _, y in LISTOPS_KNOWN]
    (x, y) = next(iter(DataLoader(train, batch_size=4, collate_fn=data.collate_fn())))
    assert x.dtype == torch.long and x.shape[0] == 4 and y.shape == (4,)
    short = ListOpsTSV(root=info.root, seq_len=8)
    assert max(len(x) for x, _ in short.train_set()) == 8
    assert ListOpsTSV(root=info.folder).train_set().labels == train.labels  # the listops-1000 folder itself


def test_listops_tsv_errors(tmp_path):
    with pytest.raises(UserError, match=r"lra_release/listops-1000/basic_train\.tsv.*dataset\.root"):
        ListOpsTSV(root=tmp_path).train_set()
    with pytest.raises(UserError, match="paths.data"):
        ListOpsTSV().train_set()
    folder = tmp_path / "listops-1000"
    folder.mkdir()
    (folder / "basic_train.tsv").write_text("expr\tlabel\n[MAX 1 2 ]\t2\n")
    with pytest.raises(UserError, match="Source<TAB>Target"):
        ListOpsTSV(root=tmp_path).train_set()


# ------------------------------------------------------------------------------------------ collate
def test_pad_collate_tokens_floats_and_pairs():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    padded, lengths = pad_sequences(seqs)
    assert padded.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    x, y = PadCollate()([(seqs[0], 1), (seqs[1], 0)])
    assert x.shape == (2, 3) and y.tolist() == [1, 0]
    (x, lengths), _ = PadCollate(with_lengths=True)([(seqs[0], 1), (seqs[1], 0)])
    assert lengths.tolist() == [3, 1]
    floats, _ = pad_sequences([torch.ones(2, 3), torch.ones(4, 3)])
    assert floats.shape == (2, 4, 3) and floats[0, 2:].abs().sum() == 0
    (a, b, la, lb), y = PadCollate(with_lengths=True)([((seqs[0], seqs[1]), 1), ((seqs[1], torch.arange(1, 6)), 0)])
    assert a.shape == b.shape == (2, 5) and la.tolist() == [3, 1] and lb.tolist() == [1, 5]
    assert pickle.loads(pickle.dumps(PadCollate(0, True))).with_lengths


# ------------------------------------------------------------------------------------------ shapes
def test_seq_shapes_pixels_and_rows():
    from snn_engine.data.shapes import generate_shapes

    pixels = SeqShapes(train_size=40, val_size=20, seed=1)
    check_interface(pixels, token=False)
    assert (pixels.seq_len, pixels.d_input) == (1024, 1)
    x, y = pixels.train_set()[0]
    assert x.shape == (1024, 1) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(x, SeqShapes(train_size=40, val_size=20, seed=1).train_set()[0][0])
    assert len(pixels.val_set()) == 20
    rows = SeqShapes(mode="rows", train_size=40, val_size=20, seed=1)
    assert (rows.seq_len, rows.d_input) == (32, 96)
    xr, yr = rows.train_set()[3]
    images, labels = generate_shapes(40, 1, "train")
    assert yr == int(labels[3])
    from snn_engine.data.shapes import SHAPES_MEAN, SHAPES_STD
    raw = (xr * SHAPES_STD + SHAPES_MEAN) * 255
    assert torch.allclose(raw[5, 3 * 7: 3 * 7 + 3], images[3, :, 5, 7].float(), atol=1e-3)  # row 5, pixel 7, RGB
    with pytest.raises(UserError, match="dataset.mode"):
        SeqShapes(mode="columns")


# ------------------------------------------------------------------------------------------ LRA real formats
def test_lra_text_fixture(tmp_path):
    info = write_imdb(tmp_path, per_class=3)
    data = LRAText(root=info.root, seq_len=64)
    check_interface(data, token=True)
    train, val = data.train_set(), data.val_set()
    assert len(train) == 6 and len(val) == 6 and len(data.test_set()) == 6
    assert sorted(train.labels) == [0, 0, 0, 1, 1, 1]
    first = sorted((tmp_path / "aclImdb" / "train" / "neg").glob("*.txt"))[0].read_bytes()
    x, y = train[0]
    assert y == 0 and len(x) <= 64 and int(x[-1]) == 2
    assert bytes((x[:-1] - 3).tolist()) == first[: len(x) - 1]
    with pytest.raises(UserError, match=r"aclImdb/train/neg.*dataset\.root"):
        LRAText(root=tmp_path / "nothing").train_set()


def test_lra_retrieval_fixture(tmp_path):
    info = write_aan(tmp_path)
    data = LRARetrieval(root=info.root, seq_len=32)
    check_interface(data, token=True)
    train, val, test = data.train_set(), data.val_set(), data.test_set()
    assert (len(train), len(val), len(test)) == (8, 4, 4)
    (doc1, doc2), y = train[1]
    assert y == 1 and doc1.dtype == torch.long and len(doc1) <= 32 and len(doc2) <= 32
    row = (info.folder / "new_aan_pairs.train.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    assert row[3].startswith("b'")  # the release's bytes-literal spelling is undone
    assert bytes((doc1[:-1] - 3).tolist()) == ast.literal_eval(row[3])[: len(doc1) - 1]
    assert aan_text("plain é") == "plain é".encode()
    (a, b), labels = next(iter(DataLoader(train, batch_size=4, collate_fn=data.collate_fn())))
    assert a.shape == b.shape and a.shape[0] == 4 and labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(UserError, match=r"tsv_data/new_aan_pairs\.train\.tsv"):
        LRARetrieval(root=tmp_path / "none").train_set()


def test_lra_image_fixture(tmp_path):
    info = write_cifar10(tmp_path, n_train=20, n_test=10)
    data = LRAImage(root=info.root, val_split=0.1)
    check_interface(data, token=False)
    train, val, test = data.train_set(), data.val_set(), data.test_set()
    assert (len(train), len(val), len(test)) == (18, 2, 10) and (data.seq_len, data.d_input) == (1024, 1)
    with open(info.folder / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    rgb = entry["data"][3].reshape(3, 1024).astype(np.float64)
    gray = np.floor((rgb[0] * 299 + rgb[1] * 587 + rgb[2] * 114 + 500) / 1000)
    x, y = test[3]
    assert y == entry["labels"][3] and x.shape == (1024, 1)
    assert np.allclose(x[:, 0].numpy() * data.std * 255 + data.mean * 255, gray, atol=1e-3)
    assert len(LRAImage(root=info.root, val_split=0).val_set()) == 10
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        LRAImage(root=tmp_path / "none").train_set()


@pytest.mark.parametrize("resolution", [32, 128])
def test_lra_pathfinder_fixture(tmp_path, resolution):
    per_dir = 5 if resolution == 32 else 2
    info = write_pathfinder(tmp_path, resolution=resolution, n_dirs=2, per_dir=per_dir)
    data = LRAPathfinder(root=info.root, resolution=resolution)
    check_interface(data, token=False)
    assert data.seq_len == resolution ** 2 and data.name == ("pathx" if resolution == 128 else "pathfinder32")
    splits = [data.train_set(), data.val_set(), data.test_set()]
    files = [f for s in splits for f in s.files]
    assert len(files) == len(set(files)) == 2 * per_dir
    x, y = splits[0][0]
    assert x.shape == (resolution ** 2, 1) and set(x.unique().tolist()) <= {-1.0, 1.0}
    path = splits[0].files[0]
    assert y == (int(path.parent.name) + int(path.stem.split("_")[1])) % 2  # the fixture's label rule
    meta = info.folder / "metadata" / "0.npy"  # a listed image that is missing and one that is empty: skipped
    (info.folder / "imgs" / "0" / "sample_98.png").write_bytes(b"")
    meta.write_text(meta.read_text() + "imgs/0 sample_98.png 98 1 0\nimgs/0 sample_99.png 99 1 0\n")
    assert sum(len(getattr(LRAPathfinder(root=info.root, resolution=resolution), s)()) for s in
               ("train_set", "val_set", "test_set")) == 2 * per_dir
    with pytest.raises(UserError, match=f"pathfinder{resolution}/curv_contour_length_14/metadata"):
        LRAPathfinder(root=tmp_path / "none", resolution=resolution).train_set()


# ------------------------------------------------------------------------------------------ MNIST
def test_seq_mnist_fixture_and_permutation(tmp_path):
    info = write_mnist(tmp_path, n_train=20, n_test=10, compress=True)
    plain = SeqMNIST(root=info.root, val_split=0.25)
    perm = SeqMNIST(root=info.root, val_split=0.25, permute=True)
    check_interface(plain, token=False)
    assert plain.name == "smnist" and perm.name == "psmnist" and plain.seq_len == 784
    assert (len(plain.train_set()), len(plain.val_set()), len(plain.test_set())) == (15, 5, 10)
    order = perm.perm
    assert sorted(order.tolist()) == list(range(784)) and torch.equal(order, SeqMNIST(permute=True).perm)
    for split in ("train_set", "val_set", "test_set"):
        (xs, ys), (xp, yp) = getattr(plain, split)()[2], getattr(perm, split)()[2]
        assert xs.shape == xp.shape == (784, 1) and ys == yp and torch.equal(xp, xs[order])
    assert not torch.equal(SeqMNIST(permute=True, perm_seed=1).perm, order)
    assert sorted(SeqMNIST(permute=True, permutation="bitreversal").perm.tolist()) == list(range(784))
    with pytest.raises(UserError, match=r"MNIST/raw.*dataset\.root"):
        SeqMNIST(root=tmp_path / "none").train_set()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_seq_mnist_real():
    plain, perm = SeqMNIST(root=SHARED_DATA), SeqMNIST(root=SHARED_DATA, permute=True)
    train, val, test = plain.train_set(), plain.val_set(), plain.test_set()
    assert (len(train), len(val), len(test)) == (54000, 6000, 10000)
    order = perm.perm
    for split in ("train_set", "val_set"):
        for i in (0, 123):
            xs, ys = getattr(plain, split)()[i]
            xp, yp = getattr(perm, split)()[i]
            assert xs.shape == (784, 1) and ys == yp and torch.equal(xp, xs[order])
    x, _ = test[0]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9


# ------------------------------------------------------------------------------------------ speech
def test_speech_commands_fixture(tmp_path):
    info = write_speech_commands(tmp_path, words=("yes", "no", "zero"), per_word=4, n_samples=1600)
    data = SpeechCommands(root=info.root)
    check_interface(data, token=False)
    train, val, test = data.train_set(), data.val_set(), data.test_set()
    assert (len(train), len(val), len(test)) == (6, 3, 3)
    assert sorted(set(train.labels)) == [18, 33, 34]  # no, yes, zero in the 35-word order
    x, y = train[0]
    assert x.shape == (16000, 1) and x[1600:].abs().sum() == 0 and x[:1600].abs().sum() > 0
    assert float(x.abs().max()) <= 1.0
    half = SpeechCommands(root=info.root, resolution=2)
    assert half.seq_len == 8000 and torch.equal(half.train_set()[0][0], x[::2])
    with pytest.raises(UserError, match=r"speech_commands_v0\.02.*validation_list\.txt"):
        SpeechCommands(root=tmp_path / "none").train_set()


# ------------------------------------------------------------------------------------------ DVS gesture
def reference_frames(events, n_frames: int, frame_us: float, t_start: float) -> np.ndarray:
    """The hand-written binning dvs_gesture.py had before tonic's to_frame_numpy: floor((t - start) / frame)."""
    frames = np.zeros((n_frames, 2, 128, 128), dtype=np.float32)
    index = np.floor((events["t"].astype(np.float64) - t_start) / frame_us).astype(np.int64)
    keep = (index >= 0) & (index < n_frames)
    np.add.at(frames, (index[keep], events["p"][keep].astype(np.int64), events["y"][keep].astype(np.int64),
                       events["x"][keep].astype(np.int64)), 1.0)
    return frames


@pytest.mark.parametrize("frame_us,n_frames,offset", [(25_000.0, 68, 0.0), (10_000.0, 150, 0.0),
                                                      (25_000.0, 68, 300_000.0), (333.0, 500, 17.0)])
def test_dvs_frames_from_tonic_are_bit_identical_to_our_old_binning(frame_us, n_frames, offset):
    pytest.importorskip("tonic", reason="tonic (the dvs extra: uv sync --extra dvs) is not installed")
    events = make_events(5000, duration_us=2_000_000, seed=3)
    events["t"][100:110] = events["t"][100]  # simultaneous events
    edge = events["t"].min() + offset + 3 * frame_us  # an event exactly on a frame boundary
    events["t"][2000] = max(int(edge), events["t"][1999])
    events["t"] = np.sort(events["t"])
    start = float(events["t"].min()) + offset
    got = events_to_frames(events, n_frames, frame_us, start)
    assert got.dtype == np.float32 and got.sum() > 100
    assert np.array_equal(got, reference_frames(events, n_frames, frame_us, start))
    shuffled = events[np.random.default_rng(0).permutation(len(events))]  # tonic needs time order: we sort
    assert np.array_equal(events_to_frames(shuffled, n_frames, frame_us, start), got)


def test_dvs_frame_binning_on_synthetic_events():
    pytest.importorskip("tonic", reason="tonic (the dvs extra: uv sync --extra dvs) is not installed")
    events = make_events(600, duration_us=2_000_000)
    frames = events_to_frames(events, n_frames=68, frame_us=25_000.0)
    t0 = events["t"].min()
    inside = (events["t"] - t0) < 68 * 25_000
    assert frames.shape == (68, 2, 128, 128) and frames.sum() == inside.sum()
    e = events[0]
    assert frames[0, int(e["p"]), int(e["y"]), int(e["x"])] >= 1
    seq = frames_to_sequence(frames, pool=2, polarity="mean")
    assert seq.shape == (68 * 64, 64)
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(frames), 2)
    assert torch.allclose(seq.reshape(68, 64, 64), pooled.mean(1))
    assert frames_to_sequence(frames, pool=2, polarity="stack").shape == (68 * 64, 128)
    sliced = GestureSlices([(events, 4)], slices_per_sample=2, slice_us=1_700_000, frame_us=25_000, n_frames=68,
                           pool=2, polarity="sum")
    assert len(sliced) == 2 and sliced[0][0].shape == (4352, 64) and sliced[1][1] == 4
    assert float(sliced[0][0].sum()) > 0


def test_dvs_gesture_without_tonic_says_how_to_install(tmp_path, monkeypatch):
    data = DVSGesture(root=tmp_path)
    assert (data.seq_len, data.d_input, data.num_classes) == (4352, 64, 11)
    monkeypatch.setitem(sys.modules, "tonic", None)  # import tonic -> ImportError, installed or not
    with pytest.raises(UserError, match=r"tonic package, which is not installed.*`uv sync --extra dvs`.*make setup"):
        data.train_set()
    with pytest.raises(UserError, match="dataset.polarity"):
        DVSGesture(polarity="max")


@pytest.fixture(scope="module")
def gesture_root(tmp_path_factory):
    """tonic (skipping without it) with its downloader disabled, and a fixture in tonic's layout."""
    tonic = pytest.importorskip("tonic", reason="tonic (the dvs extra: uv sync --extra dvs) is not installed")

    def no_network(self):
        raise AssertionError(f"tonic tried to download {self.url}")

    patch = pytest.MonkeyPatch()
    patch.setattr(tonic.datasets.DVSGesture, "download", no_network)
    yield write_dvs_gesture(tmp_path_factory.mktemp("dvs"))
    patch.undo()


def slice_events(path: str, k: int, slice_ms: float = 1700.0) -> np.ndarray:
    """The raw ``[N, 4]`` rows (``x, y, p, t`` in ms) of a fixture recording that fall in slice ``k``."""
    raw = np.load(path)
    start = raw[:, 3].min() + k * slice_ms
    return raw[(raw[:, 3] >= start) & (raw[:, 3] < start + slice_ms)]


def test_dvs_gesture_reads_tonic_layout_through_tonic(gesture_root):
    data = DVSGesture(root=gesture_root.root, slices_per_sample=2)
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (2 * gesture_root.n_train, 2 * gesture_root.n_val) == (220, 220)
    for split, users in ((train, range(1, 6)), (val, range(24, 29))):
        paths, labels = split.recordings.data, split.recordings.targets
        assert sorted(labels) == sorted(list(range(11)) * 10)  # every label once per session
        assert labels == [int(Path(p).stem) for p in paths] and set(split.recordings.users) == set(users)
        assert paths == sorted(paths)  # the same order on every file system (tonic lists in os.walk order)
        assert split.recordings.users == [int(Path(p).parent.name.split("_")[0][4:]) for p in paths]
    x, y = train[3]
    assert x.shape == (68 * 64, 64) and x.dtype == torch.float32 and y == train.recordings.targets[3]
    assert val[110 + 5][1] == val.recordings.targets[5]  # slice 1 of recording 5
    stacked = DVSGesture(root=gesture_root.root, polarity="stack").train_set()
    assert len(stacked) == 110 and stacked.recordings.data[3] == train.recordings.data[3]
    both = stacked[3][0]  # polarity 0's pooled row, then polarity 1's; "mean" averages the two
    assert both.shape == (68 * 64, 128) and torch.equal(x, (both[:, :64] + both[:, 64:]) / 2)
    assert float(x.sum()) > 0


def test_dvs_gesture_frames_match_an_independent_binning(gesture_root):
    counts = DVSGesture(root=gesture_root.root, slices_per_sample=2, pool=1, polarity="sum").train_set()
    n = len(counts.recordings)
    for r in (0, 7):
        path = counts.recordings.data[r]
        first, second = slice_events(path, 0), slice_events(path, 1)
        assert len(first) > 0 and len(second) > 0 and len(first) + len(second) == 300
        for k, rows in ((0, first), (1, second)):
            x = counts[k * n + r][0]
            assert x.shape == (68 * 128, 128) and float(x.sum()) == len(rows)
    # one pooled pixel by hand: 25 ms frame f, 2x2 block (yy, xx), max over the block per polarity, then mean
    path = counts.recordings.data[0]
    rows = slice_events(path, 0)
    f = int((rows[40, 3] - rows[:, 3].min()) // 25)
    yy, xx = int(rows[40, 1]) // 2, int(rows[40, 0]) // 2
    in_frame = rows[(rows[:, 3] - rows[:, 3].min()) // 25 == f]
    pooled = [max(int(((in_frame[:, 0] == 2 * xx + dx) & (in_frame[:, 1] == 2 * yy + dy) & (in_frame[:, 2] == p)).sum())
                  for dy in (0, 1) for dx in (0, 1)) for p in (0, 1)]
    mean = DVSGesture(root=gesture_root.root).train_set()
    assert mean.recordings.data[0] == path and sum(pooled) >= 1
    assert float(mean[0][0][f * 64 + yy, xx]) == pytest.approx(sum(pooled) / 2)


def test_dvs_gesture_split_pickles_for_worker_processes(gesture_root):
    split = DVSGesture(root=gesture_root.root).val_set()
    copy = pickle.loads(pickle.dumps(split))
    assert len(copy) == len(split) and torch.equal(copy[9][0], split[9][0]) and copy[9][1] == split[9][1]


def test_dvs_gesture_download_false_never_downloads(gesture_root, tmp_path):
    with pytest.raises(UserError, match=r"not found at .*ibmGestureTrain: .*dataset\.download=true") as empty:
        DVSGesture(root=tmp_path / "none").train_set()
    assert "\n" not in str(empty.value)
    few = write_dvs_gesture(tmp_path / "few", users=1, lightings=1)  # 11 recordings: tonic would download
    with pytest.raises(UserError, match=r"ibmGestureTest: .*at least 100 recordings.*ibmGestureTest\.tar\.gz"):
        DVSGesture(root=few.root).val_set()
    (gesture_root.folder / "ibmGestureTrain.tar.gz").rename(tmp_path / "away.tar.gz")  # archive deleted
    try:
        with pytest.raises(UserError, match="an empty file of that name will do"):
            DVSGesture(root=gesture_root.root).train_set()
    finally:
        (tmp_path / "away.tar.gz").rename(gesture_root.folder / "ibmGestureTrain.tar.gz")
