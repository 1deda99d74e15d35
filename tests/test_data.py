"""Tests of snn_engine.data: the generated shapes set, the disk loaders on fixtures, configs, mixup."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from snn_engine.data import CIFARData, ImageFolderData, MNISTData, ShapesData, generate_shapes
from snn_engine.errors import UserError

try:
    from tests.data_fixtures import write_cifar10, write_cifar100, write_imagefolder, write_mnist
except ImportError:
    from data_fixtures import write_cifar10, write_cifar100, write_imagefolder, write_mnist

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# the vision data-set configs (sequence configs are tested in test_configs.py and test_ssm_experiments.py, the
# language ones in test_lm_data.py)
CONFIGS = sorted(p for p in (REPO / "conf" / "dataset").glob("*.yaml")
                 if str(OmegaConf.load(p).get("_target_", "")).startswith("snn_engine.data.")
                 and not any(part in str(OmegaConf.load(p).get("_target_", "")) for part in (".sequence.", ".language.")))
RECIPE_MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch", label_smoothing=0.1)


def first_batch(dataset, n):
    """Stack the first ``n`` items: images ``[n, C, S, S]`` and labels ``[n]``."""
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def assert_normalised_images(x, channels, size):
    assert x.dtype == torch.float32 and x.shape[1:] == (channels, size, size)
    assert torch.isfinite(x).all() and x.abs().max() < 10


# --------------------------------------------------------------------------------------------- shapes
@pytest.fixture(scope="module")
def shapes():
    return ShapesData(train_size=1000, val_size=300, seed=3)


def test_shapes_deterministic_by_seed():
    a_x, a_y = generate_shapes(200, seed=7)
    b_x, b_y = generate_shapes(200, seed=7)
    c_x, _ = generate_shapes(200, seed=8)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, c_x)


def test_shapes_splits_shapes_and_balance(shapes):
    train, val = shapes.train_set(), shapes.val_set()
    assert (len(train), len(val)) == (1000, 300)
    x, y = train[0]
    assert_normalised_images(x[None], 3, 32)
    assert isinstance(y, int) and 0 <= y < 10
    for split in (train, val):
        counts = torch.bincount(split.labels, minlength=10)
        assert len(counts) == 10 and counts.min() > 0 and counts.max() - counts.min() <= 1
    images, _ = train.tensors()
    assert images.shape == (1000, 3, 32, 32)
    assert abs(images.mean().item()) < 0.2 and 0.8 < images.std().item() < 1.2  # about normalised
    assert shapes.train_set() is train  # generated once per instance


def test_shapes_train_and_val_share_no_image(shapes):
    train, val = shapes.train_set().images, shapes.val_set().images
    keys = {bytes(img.numpy()) for img in train}
    assert not any(bytes(img.numpy()) in keys for img in val)
    assert len(keys) == len(train)


def test_shapes_batched_fetch_matches_items(shapes):
    train = shapes.train_set()
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=False)
    x, y = next(iter(loader))
    ref_x, ref_y = first_batch(train, 16)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_shapes_options():
    data = ShapesData(num_classes=4, image_size=24, train_size=40, val_size=8)
    x, y = data.train_set().tensors()
    assert x.shape == (40, 3, 24, 24) and set(y.tolist()) == {0, 1, 2, 3}
    with pytest.raises(UserError, match="dataset.num_classes"):
        ShapesData(num_classes=11)
    with pytest.raises(UserError, match="dataset.batch_size"):
        ShapesData(batch_size=0)


# ---------------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("compress", [False, True])
def test_mnist_fixture(tmp_path, compress):
    info = write_mnist(tmp_path, n_train=20, n_test=10, compress=compress)
    data = MNISTData(root=info.root)
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (20, 10)
    x, y = first_batch(train, 20)
    assert_normalised_images(x, 1, 32)
    assert y.tolist() == [i % 10 for i in range(20)]
    assert torch.allclose(x[:, :, :2], torch.tensor(-0.1307 / 0.3081))  # padded with normalised zeros


def test_mnist_random_shift_moves_training_digits_only(tmp_path):
    info = write_mnist(tmp_path, n_train=20, n_test=10)
    plain = MNISTData(root=info.root)
    shifted = MNISTData(root=info.root, random_shift=2)
    torch.manual_seed(0)
    x_plain, x_shift = first_batch(plain.train_set(), 20)[0], first_batch(shifted.train_set(), 20)[0]
    assert x_shift.shape == x_plain.shape and not torch.equal(x_shift, x_plain)
    for a, b in zip(x_plain, x_shift):  # the same digit, translated by at most 2 px in each direction
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.allclose(torch.roll(a, (dy, dx), (1, 2)), b)]
        assert found, "a training item is not a shift of the plain digit"
    assert torch.equal(first_batch(shifted.val_set(), 10)[0], first_batch(plain.val_set(), 10)[0])
    with pytest.raises(UserError, match="random_shift=16"):
        MNISTData(root=info.root, random_shift=16)


def test_mnist_fixture_readable_by_stock_torchvision(tmp_path):
    import torchvision

    info = write_mnist(tmp_path, n_train=20, n_test=10)
    assert len(torchvision.datasets.MNIST(str(info.root), train=False)) == 10


def test_mnist_missing_names_paths_data(tmp_path):
    with pytest.raises(UserError, match=r"paths\.data") as err:
        MNISTData(root=tmp_path / "nothing").train_set()
    assert "MNIST/raw" in str(err.value) and "\n" not in str(err.value)


def test_mnist_corrupt_file(tmp_path):
    info = write_mnist(tmp_path)
    (info.folder / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="t10k-images"):
        MNISTData(root=info.root).val_set()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_real_mnist_sizes():
    data = MNISTData(root=SHARED_DATA)
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 32, 32) and y == 5  # the famous first digit


# ---------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("variant, writer, classes", [("cifar10", write_cifar10, 10),
                                                      ("cifar100", write_cifar100, 100)])
def test_cifar_fixture(tmp_path, variant, writer, classes):
    info = writer(tmp_path, n_train=20, n_test=10)
    data = CIFARData(variant, root=info.root, mixup=RECIPE_MIXUP)
    assert data.num_classes == classes and data.name == variant
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (20, 10)
    x, y = first_batch(train, 20)
    assert_normalised_images(x, 3, 32)
    assert 0 <= y.min() and y.max() < classes
    big = CIFARData(variant, root=info.root, image_size=224).val_set()
    assert big[0][0].shape == (3, 224, 224)


def test_cifar_augmentation_off_is_deterministic(tmp_path):
    info = write_cifar10(tmp_path)
    data = CIFARData("cifar10", root=info.root, crop_scale=None, hflip=0)
    train, val = data.train_set(), data.val_set()
    assert torch.equal(train[3][0], train[3][0])
    raw = torch.from_numpy(train.data[3]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(data.mean)[:, None, None], torch.tensor(data.std)[:, None, None]
    assert torch.allclose(train[3][0], (raw - mean) / std, atol=1e-5)
    assert len(val) == 10


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match=r"paths\.data.*cifar-100-python"):
        CIFARData("cifar100", root=tmp_path).train_set()
    info = write_cifar10(tmp_path)
    (info.folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="corrupt"):
        CIFARData("cifar10", root=info.root).val_set()
    with pytest.raises(UserError, match="dataset.variant"):
        CIFARData("cifar1000")


# ------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_recipe_shapes(tmp_path):
    info = write_imagefolder(tmp_path / "imagenet", num_classes=3, per_class=4, size=40)
    data = ImageFolderData(root=info.root, num_classes=3, mixup=RECIPE_MIXUP)
    assert data.repeated_aug == 3 and data.image_size == 224
    train, val = data.train_set(), data.val_set()
    assert (len(train), len(val)) == (12, 12)
    x, y = first_batch(train, 12)
    assert_normalised_images(x, 3, 224)
    assert sorted(set(y.tolist())) == [0, 1, 2]
    assert val[0][0].shape == (3, 224, 224)


def test_imagenet_eval_transform_resizes_256_and_crops_224():
    data = ImageFolderData(root="/unused", num_classes=3)
    names = [type(t).__name__ for t in data.transform(train=False).transforms]
    assert names[:2] == ["Resize", "CenterCrop"]
    resize, crop = data.transform(train=False).transforms[:2]
    assert resize.size in (256, [256], (256, 256)) and tuple(crop.size) == (224, 224)
    wide = Image.new("RGB", (500, 300), (120, 30, 200))
    assert data.transform(train=False)(wide).shape == (3, 224, 224)
    assert data.transform(train=True)(wide).shape == (3, 224, 224)


def test_imagenet_everything_off_still_loads(tmp_path):
    info = write_imagefolder(tmp_path / "in", num_classes=2, per_class=2, size=20)
    data = ImageFolderData(root=info.root, num_classes=2, image_size=32, auto_augment=None, re_prob=0,
                           mixup=None, repeated_aug=0, color_jitter=None)
    assert data.mixup_fn() is None and data.repeated_aug == 0
    x, _ = first_batch(data.train_set(), 4)
    assert_normalised_images(x, 3, 32)


def test_imagenet_missing_or_wrong(tmp_path):
    with pytest.raises(UserError, match=r"train/<class>/\*\.JPEG.*paths\.data.*<paths\.data>/imagenet"):
        ImageFolderData(root=tmp_path / "imagenet").train_set()
    info = write_imagefolder(tmp_path / "in", num_classes=3, per_class=1, size=16)
    with pytest.raises(UserError, match="dataset.num_classes=3"):
        ImageFolderData(root=info.root, num_classes=1000).train_set()
    (info.root / "val" / "n00000002").rename(info.root / "val" / "other")
    with pytest.raises(UserError, match="same <class> folders"):
        ImageFolderData(root=info.root, num_classes=3).val_set()


# ---------------------------------------------------------------------------------------------- mixup
def test_mixup_soft_targets():
    fn = ShapesData(mixup=RECIPE_MIXUP).mixup_fn()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    mixed, soft = fn(x, y)
    assert mixed.shape == x.shape and soft.shape == (8, 10)
    assert torch.allclose(soft.sum(1), torch.ones(8)) and (soft > 0).all()  # smoothing spreads mass


@pytest.mark.parametrize("mixup", [None, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}])
def test_mixup_off(mixup):
    assert ShapesData(mixup=mixup).mixup_fn() is None


def test_mixup_bad_settings():
    with pytest.raises(UserError, match="unknown key"):
        ShapesData(mixup={"alpha": 1.0})
    with pytest.raises(UserError, match="dataset.mixup.mode"):
        ShapesData(mixup={"mixup_alpha": 1.0, "mode": "row"})


# -------------------------------------------------------------------------------------------- configs
def test_every_dataset_config_is_present():
    assert {p.stem for p in CONFIGS} >= {"shapes", "mnist", "cifar10", "cifar100", "imagenet"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates(tmp_path, path):
    cfg = OmegaConf.create({"paths": {"data": str(tmp_path)}, "dataset": OmegaConf.load(path)})
    data = hydra.utils.instantiate(cfg.dataset)
    for attr, kind in (("name", str), ("num_classes", int), ("in_chans", int), ("image_size", int),
                       ("batch_size", int), ("num_workers", int), ("repeated_aug", int)):
        assert isinstance(getattr(data, attr), kind), attr
    assert data.name == path.stem
    if data.mixup is not None:
        assert data.mixup_fn() is not None
    if path.stem == "shapes":
        x, y = data.val_set()[0]
        assert x.shape == (data.in_chans, data.image_size, data.image_size)
        return
    assert str(data.root).startswith(str(tmp_path))
    with pytest.raises(UserError, match=r"paths\.data"):
        data.train_set()


def test_mixup_needs_even_batch():
    with pytest.raises(UserError, match="dataset.batch_size must be even"):
        ShapesData(batch_size=63, mixup=RECIPE_MIXUP)
    assert ShapesData(batch_size=63).mixup_fn() is None
