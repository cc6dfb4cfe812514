"""Data sets: ``digits`` (offline default), CIFAR-10/100, SVHN, MNIST through torchvision, ``imagefolder:PATH``.

``digits`` is scikit-learn's real handwritten digits (1797 8x8 images that ship inside the package), resized to
32x32 so CIFAR-style models apply unchanged, with a fixed train/val split (the same on every machine). The
torchvision sets are read from ``--data-dir`` (downloaded there with ``--download`` where the machine has
internet); when absent, a one-line error says how to get them.

Cross-validation (``--folds F``, ``--fold f``): the data set's *training pool* is dealt into F stratified folds
(:func:`fold_indices`, determined by the seed alone); fold f validates, the other folds train. The pool of
``digits`` is all 1797 samples (so across the folds every sample is validated once per seed); the pool of a
torchvision set or an image folder is its official training split, and its official test split (``val/`` of an
image folder) stays the test set (:attr:`DataSpec.test`), untouched by the folds and never used in training.

Importing this module does not import torch; :func:`train_size` checks a run's data and counts its training samples
without it for ``digits`` (the command's start, before Ray).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset

_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
}


@dataclass
class DataSpec:
    """A data set ready to train: what trains, what validates (every epoch), and the official test split where
    cross-validation took the validation set from the training pool instead (else None: ``val`` is the data
    set's own validation split)."""
    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    test: Dataset | None = None


DIGITS_VAL_FRACTION = 0.2       # the share of digits' fixed validation split (no folds)
# mixed into the seed of the folds' shuffles, so that they do not repeat the data order of the same seed
_FOLD_SALT = 0x5EEDF01D


def _check_folds(folds: int, pool: int) -> None:
    if folds < 2 or folds > pool:
        raise UserError(f"--folds must be between 2 and the {pool} samples of the training pool, got {folds}")


def _check_fold(folds: int, fold: int) -> None:
    if not 0 <= fold < folds:
        raise UserError(f"--fold must be between 0 and --folds - 1 ({folds - 1}), got {fold}")


def _check_data_dir(data_dir: str | None) -> None:
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"--data-dir {data_dir} is a file, not a folder")


def fold_indices(labels, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """The training pool's samples dealt into ``folds`` stratified folds, the same for a seed on every machine.

    Each class's samples (classes in increasing order) are shuffled by one ``torch.Generator`` seeded from
    ``seed``, then dealt round-robin into the folds, the dealing carrying on from class to class: the folds are
    disjoint, cover the pool, and any two differ by at most one sample of each class (and at most one in all).

    Args:
        labels: the class of every sample of the pool (a sequence of ints, a tensor or an array).
        folds: the number of folds, >= 2 and at most the pool's size.
        seed: the seed of the shuffles.
    Returns:
        ``folds`` sorted int64 tensors of sample indices.
    Raises:
        UserError: fewer than 2 folds, or more folds than samples.
    """
    import torch
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    _check_folds(folds, len(y))
    g = torch.Generator().manual_seed(seed + _FOLD_SALT)
    parts: list[list[torch.Tensor]] = [[] for _ in range(folds)]
    start = 0                                          # the fold that the next class's first sample goes to
    for c in torch.unique(y).tolist():                 # sorted
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        for f in range(folds):
            parts[f].append(members[(f - start) % folds::folds])
        start = (start + len(members)) % folds
    return [torch.sort(torch.cat(p))[0] for p in parts]


def fold_split(labels, folds: int, fold: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` sample indices of the pool: fold ``fold`` of :func:`fold_indices` validates, the other
    folds (sorted indices) train.

    Raises:
        UserError: a bad number of folds (see :func:`fold_indices`), or ``fold`` not in ``0..folds-1``.
    """
    _check_fold(folds, fold)
    import torch
    parts = fold_indices(labels, folds, seed)
    train = torch.sort(torch.cat([p for i, p in enumerate(parts) if i != fold]))[0]
    return train, parts[fold]


def _labels(ds: Dataset) -> torch.Tensor:
    """The class of every sample of a torchvision data set, read without loading an image."""
    import torch
    for attr in ("targets", "labels"):                 # CIFAR, MNIST, ImageFolder: targets; SVHN: labels
        if getattr(ds, attr, None) is not None:
            return torch.as_tensor(getattr(ds, attr), dtype=torch.long)
    raise UserError(f"cannot split {type(ds).__name__} into folds: it does not list its samples' classes")


def digits_arrays():
    """scikit-learn's digits as ``(images, target)``: (1797, 8, 8) pixel values 0..16 and (1797,) classes, what
    ``sklearn.datasets.load_digits()`` returns in ``images`` and ``target``.

    Read from the file that ships inside scikit-learn (``datasets/data/digits.csv.gz``) without importing it:
    importing ``sklearn.datasets`` takes longer than everything else a run's data need, in the command and again
    in the driver (measured in ``benchmarks/startup/README.md``). Where the file is not there, scikit-learn's own
    loader."""
    import gzip
    import importlib.util

    import numpy as np
    found = importlib.util.find_spec("sklearn")                  # (finds the package without importing it)
    path = (os.path.join(os.path.dirname(found.origin), "datasets", "data", "digits.csv.gz")
            if found is not None and found.origin else "")
    if os.path.isfile(path):
        with gzip.open(path) as f:
            table = np.loadtxt(f, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images, d.target


def digits(val_fraction: float = DIGITS_VAL_FRACTION, folds: int = 0, fold: int = 0, seed: int = 0) -> DataSpec:
    """scikit-learn's handwritten digits at 32x32, one channel, 10 classes.

    Args:
        val_fraction: with ``folds`` 0, the share of the fixed validation split (the same on every machine).
        folds: >= 2: all 1797 samples are the pool of :func:`fold_split`, ``fold`` validates; 0: the fixed split.
        fold, seed: the validating fold, and the seed of the folds.
    Raises:
        UserError: a bad ``folds`` or ``fold``.
    """
    import torch
    from torch.utils.data import TensorDataset
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0            # (1797, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    y = torch.tensor(target, dtype=torch.long)
    if folds:
        train, val = fold_split(y, folds, fold, seed)
    else:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))   # the fixed split
        n_val = int(len(x) * val_fraction)
        val, train = perm[:n_val], perm[n_val:]
    return DataSpec(TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), 10, 1, 32)


def _cross_validated(spec: DataSpec, pool_for_val: Dataset, folds: int, fold: int, seed: int) -> DataSpec:
    """``spec`` with its training split cut into folds: the other folds train (with the training transform), fold
    ``fold`` validates (the same samples through ``pool_for_val``, the training split with the validation
    transform), the official test split becomes ``test``."""
    from torch.utils.data import Subset
    train, val = fold_split(_labels(spec.train), folds, fold, seed)
    return DataSpec(Subset(spec.train, train.tolist()), Subset(pool_for_val, val.tolist()), spec.num_classes,
                    spec.in_channels, spec.image_size, test=spec.val)


def _torchvision(name: str, data_dir: str | None, download: bool, folds: int = 0, fold: int = 0,
                 seed: int = 0) -> DataSpec:
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
            pool_val = torchvision.datasets.SVHN(data_dir, split="train", transform=val_tf) if folds else None
        else:
            cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
                   "mnist": torchvision.datasets.MNIST}[name]
            tr = cls(data_dir, train=True, transform=train_tf, download=download)
            va = cls(data_dir, train=False, transform=val_tf, download=download)
            pool_val = cls(data_dir, train=True, transform=val_tf) if folds else None
    except (RuntimeError, OSError) as e:            # OSError: urllib's URLError when a download cannot connect
        what = "could not be downloaded into" if isinstance(e, OSError) else "not found or corrupt in"
        hint = ("add --download on a machine with internet" if not download else
                "this machine cannot download it; fetch it elsewhere and copy it into --data-dir")
        raise UserError(f"{name} {what} {data_dir} ({str(e).splitlines()[0]}); {hint}, "
                        f"or use the offline --dataset digits") from None
    classes = {"cifar10": 10, "cifar100": 100, "svhn": 10, "mnist": 10}[name]
    spec = DataSpec(tr, va, classes, 1 if name == "mnist" else 3, 32)
    return _cross_validated(spec, pool_val, folds, fold, seed) if folds else spec


def _imagefolder(path: str, folds: int = 0, fold: int = 0, seed: int = 0) -> DataSpec:
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
    spec = DataSpec(tr, va, len(tr.classes), 3, 224)
    if not folds:
        return spec
    pool_val = torchvision.datasets.ImageFolder(train_dir, va.transform)
    return _cross_validated(spec, pool_val, folds, fold, seed)


def load(name: str, data_dir: str | None = None, download: bool = False, folds: int = 0, fold: int = 0,
         seed: int = 0) -> DataSpec:
    """The data set ``name``.

    Args:
        data_dir, download: where a torchvision set is, and whether to download it there.
        folds: 0: the data set's own split (digits: the fixed 80/20 split; a torchvision set or an image folder:
            its official training split trains, its test split validates). >= 2: cross-validation on the training
            pool (see the module's docstring): fold ``fold`` of the pool validates, the other folds train, the
            official test split (if any) is :attr:`DataSpec.test`.
        fold: the validating fold, ``0..folds-1`` (ignored with ``folds`` 0).
        seed: the seed the folds are dealt from (:func:`fold_indices`).
    Raises:
        UserError: an unknown name, a ``data_dir`` that is not a folder, data that is missing or unreadable, a bad
            ``folds`` or ``fold``.
    """
    _check_data_dir(data_dir)
    if folds:
        _check_fold(folds, fold)
    if name == "digits":
        return digits(folds=folds, fold=fold, seed=seed)
    if name in _MEAN_STD:
        return _torchvision(name, data_dir, download, folds, fold, seed)
    if name.startswith("imagefolder:"):
        return _imagefolder(name.split(":", 1)[1], folds, fold, seed)
    raise UserError(f"unknown dataset {name!r}; available: digits, cifar10, cifar100, svhn, mnist, imagefolder:PATH")


def load_for(cfg) -> DataSpec:
    """The data set of a run (a :class:`~raypar.training.config.TrainConfig`): :func:`load` with its data
    settings, the folds dealt from its seed.

    Raises:
        UserError: as :func:`load`.
    """
    d = cfg.data
    return load(d.dataset, d.data_dir, d.download, folds=d.folds, fold=d.fold, seed=cfg.optim.seed)


def loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
           shard: tuple[int, int] = (0, 1)) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): a resumed run sees the same batches.

    ``shard = (rank, world)`` gives each data-parallel replica its own disjoint part of the epoch, every replica
    the same number of samples (the last ``len % world`` samples of a shuffled epoch are left out): replica r's
    i-th batch of size B holds exactly the samples of the i-th batch of size ``world * B`` of one process."""
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    idx = torch.randperm(len(ds), generator=g) if shuffle else torch.arange(len(ds))
    rank, world = shard
    if shuffle and world > 1:
        idx = idx[:len(idx) - len(idx) % world]
    idx = idx[rank::world].tolist()
    workers = 0 if isinstance(ds, TensorDataset) else min(4, os.cpu_count() or 1)
    return DataLoader(Subset(ds, idx), batch_size=batch_size, shuffle=False,
                      num_workers=workers, drop_last=shuffle and len(idx) >= 2 * batch_size)


def train_size(cfg) -> int:
    """How many samples train in the run ``cfg`` (a :class:`~raypar.training.config.TrainConfig`): ``len(load_for(cfg)
    .train)``, with the same checks. ``digits`` is counted without torch (its folds dealt as :func:`fold_indices`
    deals them); another data set is loaded.

    Raises:
        UserError: as :func:`load`.
    """
    d = cfg.data
    if d.dataset != "digits":
        return len(load_for(cfg).train)
    _check_data_dir(d.data_dir)
    _, target = digits_arrays()
    if not d.folds:
        return len(target) - int(len(target) * DIGITS_VAL_FRACTION)
    _check_fold(d.folds, d.fold)
    _check_folds(d.folds, len(target))
    validating, start = 0, 0
    for c in sorted(set(target.tolist())):                # each class dealt round the folds from ``start``
        members = int((target == c).sum())
        validating += len(range((d.fold - start) % d.folds, members, d.folds))
        start = (start + members) % d.folds
    return len(target) - validating


def fitted_batch(train_samples: int, batch_size: int, replicas: int = 1) -> int:
    """``batch_size``, or the training set's share per replica (of ``train_samples``) where that is smaller: a step
    never holds more samples than there are (a larger batch would only size buffers and profiles for data that does
    not exist)."""
    return max(1, min(batch_size, train_samples // max(1, replicas)))
