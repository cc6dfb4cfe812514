"""Cross-validation folds of the training pool (raypar.training.data) and a study's runs over them."""
import pytest
import torch
from sklearn.datasets import load_digits

from raypar.errors import UserError
from raypar.tools.study import plan
from raypar.training import data
from raypar.training.config import TrainConfig

LABELS = torch.tensor(load_digits().target)             # the pool of digits: all 1797 samples


def _class_counts(idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels[idx], minlength=int(labels.max()) + 1)


@pytest.mark.parametrize("folds", [2, 3, 5, 10])
def test_folds_are_disjoint_cover_the_pool_and_are_stratified(folds):
    parts = data.fold_indices(LABELS, folds, seed=0)
    assert len(parts) == folds
    everything = torch.cat(parts)
    assert len(everything) == len(LABELS) and len(set(everything.tolist())) == len(LABELS)   # disjoint, cover
    counts = torch.stack([_class_counts(p, LABELS) for p in parts])                            # fold x class
    assert (counts.max(0).values - counts.min(0).values).max() <= 1                           # per class
    sizes = torch.tensor([len(p) for p in parts])
    assert sizes.max() - sizes.min() <= 1                                                      # and in all
    for p in parts:
        assert torch.equal(p, torch.sort(p)[0])


def test_folds_are_stratified_for_unbalanced_classes():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 11 + [5] * 2)
    parts = data.fold_indices(labels, 4, seed=3)
    counts = torch.stack([_class_counts(p, labels) for p in parts])
    assert (counts.max(0).values - counts.min(0).values).max() <= 1
    assert counts.sum(0).tolist() == [7, 3, 11, 0, 0, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(len(labels)))


def test_folds_are_deterministic_for_a_seed_and_differ_between_seeds():
    a, b = data.fold_indices(LABELS, 5, seed=0), data.fold_indices(LABELS.tolist(), 5, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = data.fold_indices(LABELS, 5, seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a, other))


def test_fold_split_trains_on_the_other_folds():
    parts = data.fold_indices(LABELS, 3, seed=7)
    for fold in range(3):
        train, val = data.fold_split(LABELS, 3, fold, seed=7)
        assert torch.equal(val, parts[fold])
        assert set(train.tolist()) == set(range(len(LABELS))) - set(val.tolist())


def test_digits_with_folds_validates_every_sample_once_per_seed():
    fixed = data.digits()                               # the pool, put back together from the fixed split
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(1234))
    pool = torch.empty(1797, *fixed.train.tensors[0].shape[1:])
    pool[perm[:359]], pool[perm[359:]] = fixed.val.tensors[0], fixed.train.tensors[0]
    parts = data.fold_indices(LABELS, 3, seed=2)
    for fold in range(3):
        spec = data.load("digits", folds=3, fold=fold, seed=2)
        assert len(spec.train) + len(spec.val) == 1797 and spec.test is None
        assert torch.equal(spec.val.tensors[0], pool[parts[fold]])
        assert torch.equal(spec.val.tensors[1], LABELS[parts[fold]])
        rest = torch.cat([p for i, p in enumerate(parts) if i != fold]).sort()[0]
        assert torch.equal(spec.train.tensors[0], pool[rest])


def test_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    """The digits come from the file inside scikit-learn, equal to its loader's arrays; where the file is missing,
    from its loader."""
    import subprocess
    import sys
    images, target = data.digits_arrays()
    d = load_digits()
    assert (images == d.images).all() and images.shape == (1797, 8, 8) and (target == d.target).all()
    fresh = subprocess.run([sys.executable, "-c", "import sys; from raypar.training import data; "
                            "data.digits(); print('sklearn' in sys.modules)"], capture_output=True, text=True)
    assert fresh.returncode == 0 and fresh.stdout.split()[-1] == "False", fresh.stderr[-2000:]
    monkeypatch.setattr(data.os.path, "isfile", lambda path: False)
    images, target = data.digits_arrays()
    assert (images == d.images).all() and (target == d.target).all()


@pytest.mark.parametrize("folds,fold,seed", [(0, 0, 0), (2, 0, 0), (2, 1, 3), (5, 4, 1), (7, 3, 2), (10, 9, 0)])
def test_the_training_size_is_counted_without_torch_as_loaded(folds, fold, seed):
    """`data.train_size` (what the command checks before Ray starts, without torch) is the size of the training split
    `load_for` makes, for the fixed split and every fold."""
    cfg = TrainConfig.from_flat(folds=folds, fold=fold, seed=seed)
    assert data.train_size(cfg) == len(data.load_for(cfg).train)


@pytest.mark.parametrize("folds,fold", [(1, 0), (3, 3), (3, -1), (1800, 0)])
def test_the_training_size_fails_as_loading_does(folds, fold):
    cfg = TrainConfig.from_flat(folds=2, fold=0)
    cfg.data.folds, cfg.data.fold = folds, fold                 # past TrainConfig's own checks, if it has them
    with pytest.raises(UserError) as counted:
        data.train_size(cfg)
    with pytest.raises(UserError) as loaded:
        data.load_for(cfg)
    assert str(counted.value) == str(loaded.value)


def test_folds_zero_keeps_the_fixed_split():
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(1234))
    val, train = perm[:359], perm[359:]
    spec = data.load("digits")                         # folds = 0: today's fixed 80/20 split, whatever the seed
    assert torch.equal(spec.val.tensors[1], LABELS[val]) and torch.equal(spec.train.tensors[1], LABELS[train])
    again = data.load("digits", folds=0, fold=0, seed=5)
    assert torch.equal(again.train.tensors[0], spec.train.tensors[0]) and again.test is None


def test_load_for_a_run_deals_the_folds_from_its_seed():
    cfg = TrainConfig.from_flat(folds=4, fold=2, seed=9)
    spec = data.load_for(cfg)
    _, val = data.fold_split(LABELS, 4, 2, seed=9)
    assert torch.equal(spec.val.tensors[1], LABELS[val])


@pytest.mark.parametrize("folds, fold, message", [(1, 0, "--folds must be between 2"), (2000, 0, "--folds must be"),
                                                  (3, 3, "--fold must be between 0 and --folds - 1 (2)")])
def test_bad_folds_are_one_line_user_errors(folds, fold, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.fold_split(LABELS, folds, fold)


class _Labelled(torch.utils.data.Dataset):
    """A stand-in for a torchvision training split: labels in ``targets``, a transform that tags its output."""
    def __init__(self, labels, tag):
        self.targets, self.tag = list(labels), tag

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return (self.tag, i), self.targets[i]


def test_a_torchvision_pool_is_its_training_split_and_the_test_split_stays_the_test_set():
    labels = [i % 10 for i in range(200)]
    official = data.DataSpec(_Labelled(labels, "train-tf"), _Labelled(range(10), "test"), 10, 3, 32)
    spec = data._cross_validated(official, _Labelled(labels, "val-tf"), folds=4, fold=1, seed=0)
    assert spec.test is official.val                                       # untouched
    assert len(spec.train) == 150 and len(spec.val) == 50
    train_ids = {spec.train[i][0][1] for i in range(len(spec.train))}
    val_ids = {spec.val[i][0][1] for i in range(len(spec.val))}
    assert not train_ids & val_ids and train_ids | val_ids == set(range(200))
    assert {spec.train[i][0][0] for i in range(len(spec.train))} == {"train-tf"}   # augmented
    assert {spec.val[i][0][0] for i in range(len(spec.val))} == {"val-tf"}        # validated without augmentation


def test_a_study_runs_every_fold_of_every_seed_with_the_fold_in_the_name():
    base = TrainConfig.from_flat(folds=3, epochs=1)
    runs = plan(base, [1, 2], [1], [0, 1], "st")
    names = [c.run.name for c in runs]
    assert names == [f"st-n{n}-k1-s{s}-f{f}" for n in (1, 2) for s in (0, 1) for f in range(3)]
    assert [(c.data.folds, c.data.fold, c.optim.seed) for c in runs[:6]] == [
        (3, f, s) for s in (0, 1) for f in range(3)]
    plain = plan(TrainConfig.from_flat(epochs=1), [1, 2], [1], [0, 1], "st")       # --folds 0: as before
    assert [c.run.name for c in plain] == ["st-n1-k1-s0", "st-n1-k1-s1", "st-n2-k1-s0", "st-n2-k1-s1"]
