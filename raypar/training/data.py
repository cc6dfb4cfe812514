"""Data sets: ``digits`` (offline default), CIFAR-10/100, SVHN, MNIST through torchvision, ``imagefolder:PATH``.

``digits`` is scikit-learn's real handwritten digits (1797 8x8 images that ship inside the package), resized to
32x32 so CIFAR-style models apply unchanged, with a fixed train/val split (the same on every machine). The
torchvision sets are read from ``--data-dir`` (downloaded there with ``--download`` where the machine has
internet); when absent, a one-line error says how to get them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import UserError

_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
}


@dataclass
class DataSpec:
    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int


def digits(val_fraction: float = 0.2) -> DataSpec:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0          # (1797, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))   # the fixed split
    n_val = int(len(x) * val_fraction)
    val, train = perm[:n_val], perm[n_val:]
    return DataSpec(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10, 1, 32)


def _torchvision(name: str, data_dir: str | None, download: bool) -> DataSpec:
    import torchvision
    from torchvision import transforms as T
    if not data_dir:
        raise UserError(f"data set {name!r} needs --data-dir (add --download to fetch it there where the machine "
                        f"has internet; the offline default is --dataset digits)")
    mean, std = _MEAN_STD[name]
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    aug = {"cifar10": [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
           "cifar100": [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
           "svhn": [T.RandomCrop(32, padding=4)],
           "mnist": [T.Pad(2)]}[name]
    train_tf, val_tf = T.Compose(aug + norm), T.Compose(([T.Pad(2)] if name == "mnist" else []) + norm)
    try:
        if name == "svhn":
            tr = torchvision.datasets.SVHN(data_dir, split="train", transform=train_tf, download=download)
            va = torchvision.datasets.SVHN(data_dir, split="test", transform=val_tf, download=download)
        else:
            cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
                   "mnist": torchvision.datasets.MNIST}[name]
            tr = cls(data_dir, train=True, transform=train_tf, download=download)
            va = cls(data_dir, train=False, transform=val_tf, download=download)
    except (RuntimeError, OSError) as e:            # OSError: urllib's URLError when a download cannot connect
        what = "could not be downloaded into" if isinstance(e, OSError) else "not found or corrupt in"
        hint = ("add --download on a machine with internet" if not download else
                "this machine cannot download it; fetch it elsewhere and copy it into --data-dir")
        raise UserError(f"{name} {what} {data_dir} ({str(e).splitlines()[0]}); {hint}, "
                        f"or use the offline --dataset digits") from None
    classes = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10}[name]
    return DataSpec(tr, va, classes, 1 if name == "mnist" else 3, 32)


def _imagefolder(path: str) -> DataSpec:
    import torchvision
    from torchvision import transforms as T
    train_dir, val_dir = os.path.join(path, "train"), os.path.join(path, "val")
    if not (os.path.isdir(train_dir) and os.path.isdir(val_dir)):
        raise UserError(f"imagefolder:{path} needs the subfolders train/ and val/, one folder per class in each")
    norm = [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    try:
        tr = torchvision.datasets.ImageFolder(train_dir, T.Compose([T.RandomResizedCrop(224),
                                                                    T.RandomHorizontalFlip()] + norm))
        va = torchvision.datasets.ImageFolder(val_dir, T.Compose([T.Resize(256), T.CenterCrop(224)] + norm))
    except FileNotFoundError as e:                  # no class folders, or no image file in them
        raise UserError(f"imagefolder:{path}: {str(e).splitlines()[0]} (train/ and val/ need one folder per class "
                        f"holding images)") from None
    if tr.classes != va.classes:
        raise UserError(f"imagefolder:{path}: train/ and val/ have different class folders")
    for split, ds in (("train", tr), ("val", va)):
        try:
            ds[0]                                   # an image that cannot be read fails here, not in a worker
        except Exception as e:  # noqa: BLE001 - PIL raises several kinds
            raise UserError(f"imagefolder:{path}: {ds.samples[0][0]} in {split}/ is not a readable image "
                            f"({type(e).__name__})") from None
    return DataSpec(tr, va, len(tr.classes), 3, 224)


def load(name: str, data_dir: str | None = None, download: bool = False) -> DataSpec:
    """The data set ``name``.

    Raises:
        UserError: an unknown name, a ``data_dir`` that is not a folder, data that is missing or unreadable.
    """
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is a file, not a folder")
    if name == "digits":
        return digits()
    if name in _MEAN_STD:
        return _torchvision(name, data_dir, download)
    if name.startswith("imagefolder:"):
        return _imagefolder(name.split(":", 1)[1])
    raise UserError(f"unknown dataset {name!r}; available: digits, cifar10, cifar100, svhn, mnist, imagefolder:PATH")


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
           shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): a resumed run sees the same batches.

    ``shard = (rank, world)`` gives each data-parallel replica its own disjoint part of the epoch, every replica
    the same number of samples (the last ``len % world`` samples of a shuffled epoch are left out): replica r's
    i-th batch of size B holds exactly the samples of the i-th batch of size ``world * B`` of one process."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    idx = torch.randperm(len(ds), generator=g) if shuffle else torch.arange(len(ds))
    rank, world = shard
    if shuffle and world > 1:
        idx = idx[:len(idx) - len(idx) % world]
    idx = idx[rank::world].tolist()
    workers = 0 if isinstance(ds, TensorDataset) else min(4, os.cpu_count() or 1)
    return DataLoader(torch.utils.data.Subset(ds, idx), batch_size=batch_size, shuffle=False,
                      num_workers=workers, drop_last=shuffle and len(idx) >= 2 * batch_size)


def fitted_batch(spec: DataSpec, batch_size: int, replicas: int = 1) -> int:
    """``batch_size``, or the training set's share per replica where that is smaller: a step never holds more samples
    than there are (a larger batch would only size buffers and profiles for data that does not exist)."""
    return max(1, min(batch_size, len(spec.train) // max(1, replicas)))
