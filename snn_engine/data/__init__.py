"""Vision data sets behind one interface (:class:`VisionData`), instantiated from ``conf/dataset/*.yaml``.

Every data-set object carries ``name, num_classes, in_chans, image_size, batch_size, num_workers,
repeated_aug`` and provides ``train_set()`` / ``val_set()`` (items ``(float32 [C, S, S], int)``) and
``mixup_fn()`` (a timm ``Mixup`` or ``None``).

* :class:`ShapesData`: the embedded default, generated in memory (no files, no download).
* :class:`MNISTData`, :class:`CIFARData` (CIFAR-10/100), :class:`ImageFolderData` (ImageNet-1K).
"""

from snn_engine.data.base import VisionData
from snn_engine.data.shapes import CLASS_NAMES, ShapesData, ShapesDataset, generate_shapes

_VISION = ("CIFARData", "ImageFolderData", "MNISTData", "read_idx")


def __getattr__(name: str):
    """Load the torchvision-backed data sets on first use: importing torchvision costs seconds that the
    embedded default run does not need."""
    if name in _VISION:
        from snn_engine.data import vision

        return getattr(vision, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["VisionData", "ShapesData", "ShapesDataset", "generate_shapes", "CLASS_NAMES", "MNISTData",
           "CIFARData", "ImageFolderData", "read_idx"]
