"""Paired statistics against the original network (raypar.tools.compare): Student t intervals, pairing by (fold,
seed) within a recipe, time to accuracy, and how they are rendered (compare's formats, the study's report)."""
import csv
import io
import json
import math
import sys

import pytest

from raypar.tools import compare, study
from raypar.tools.compare import RunSummary, paired, rows, t975, time_to_accuracy
from raypar.training.config import TrainConfig


def test_paired_statistics_of_a_hand_computed_example():
    n, mean, std, lo, hi = paired([0.5, -0.2, 0.3, 0.1])
    # mean 0.7 / 4; squared deviations 0.105625 + 0.140625 + 0.015625 + 0.005625 = 0.2675 over n - 1 = 3
    assert n == 4 and mean == pytest.approx(0.175)
    assert std == pytest.approx(math.sqrt(0.2675 / 3)) and std == pytest.approx(0.2986079, abs=1e-7)
    half = 3.182446 * 0.2986079 / 2                           # t(0.975, 3) * std / sqrt(4)
    assert half == pytest.approx(0.475152, abs=1e-6)
    assert lo == pytest.approx(0.175 - half, abs=1e-6) and hi == pytest.approx(0.175 + half, abs=1e-6)


def test_paired_statistics_of_one_and_of_no_difference():
    assert paired([0.02]) == (1, 0.02, None, None, None)      # no spread, no interval from one pair
    assert paired([0.1, 0.1, 0.1])[1:] == pytest.approx((0.1, 0.0, 0.1, 0.1))
    with pytest.raises(ValueError):
        paired([])


def test_t_quantiles_with_and_without_scipy(monkeypatch):
    assert t975(3) == pytest.approx(3.182446, abs=1e-6) and t975(1) == pytest.approx(12.706205, abs=1e-6)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)     # as if scipy were not installed
    with pytest.raises(ImportError):
        from scipy.stats import t  # noqa: F401
    assert t975(3) == 3.182446 and t975(30) == 2.042272
    assert t975(40) == pytest.approx(2.0210754, abs=1e-5) and t975(1000) == pytest.approx(1.9623391, abs=1e-5)
    with pytest.raises(ValueError):
        t975(0)


def test_time_to_accuracy_sums_the_epochs_up_to_the_first_that_reaches_the_target():
    acc = [(1, 0.5), (2, 0.8), (3, 0.9), (4, 0.85)]
    secs = [(1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)]
    assert time_to_accuracy(acc, secs, 0.8) == 5.0            # reached at epoch 2: 2 + 3 s
    assert time_to_accuracy(acc, secs, 0.85) == 9.0           # first at epoch 3, not 4
    assert time_to_accuracy(acc, secs, 0.3) == 2.0
    assert time_to_accuracy(acc, secs, 0.95) is None          # never
    assert time_to_accuracy(list(reversed(acc)), secs, 0.8) == 5.0     # by epoch, whatever the order
    assert time_to_accuracy([(1, 0.1 + 0.2)], secs, 0.3) == 2.0        # its own mean reaches it despite rounding


def _run(n, seed, fold, accs, secs=1.0, lr="0.05", folds="2", k=1, sps=None):
    params = dict(model="vgg11", width_mult="0.25", dataset="digits", folds=folds, fold=str(fold),
                  epochs=str(len(accs)), batch_size="64", lr=lr, lr_schedule="cosine", weight_decay="0.0005",
                  num_subnets=str(n), iterations=str(k), replicas="1", seed=str(seed), recipe="r@1")
    hist = {"val_acc": [(e + 1, a) for e, a in enumerate(accs)],
            "epoch_time_s": [(e + 1, secs) for e in range(len(accs))]}
    return RunSummary(f"n{n}k{k}s{seed}f{fold}{lr}", params, seed, max(accs), accs[-1], secs, sps or 100.0 * n, hist)


BASE = [_run(1, 0, 0, [0.6, 0.8, 0.90], 2.0), _run(1, 0, 1, [0.5, 0.7, 0.80], 2.0),
        _run(1, 1, 0, [0.6, 0.8, 0.85], 2.0), _run(1, 1, 1, [0.7, 0.9, 0.95], 2.0)]
PAR = [_run(2, 1, 1, [0.8, 0.9, 0.96]), _run(2, 0, 1, [0.6, 0.85, 0.78]),        # diffs +0.01, -0.02
       _run(2, 1, 0, [0.7, 0.88, 0.88]), _run(2, 0, 0, [0.7, 0.9, 0.95])]        # diffs +0.03, +0.05
SLOW = [_run(4, 0, 0, [0.5, 0.6, 0.7]), _run(4, 0, 1, [0.5, 0.6, 0.7]),          # diffs -0.2, -0.1
        _run(4, 7, 0, [0.5, 0.6, 0.7])]                                          # seed 7: no original to pair with
OTHER = [_run(1, 0, 0, [0.4, 0.5], lr="0.1"), _run(2, 0, 0, [0.5, 0.6], lr="0.1")]   # another recipe


def test_rows_pair_each_run_with_the_original_of_the_same_fold_and_seed():
    table = rows(SLOW + PAR + OTHER + BASE)
    by = {(r.n, r.replicas, r.recipe, r.run_ids[0].endswith("0.1")): r for r in table}
    base, par, slow = by[(1, 1, "r@1", False)], by[(2, 1, "r@1", False)], by[(4, 1, "r@1", False)]
    assert base.folds == par.folds == 2 and base.runs == 4 and slow.runs == 3 and par.seeds == [0, 1]
    assert base.base_val_acc == pytest.approx(0.875) and par.base_val_acc == pytest.approx(0.875)
    assert base.pairs is None and base.pair_mean is None                  # the original is not paired with itself
    # diffs +0.05, -0.02, +0.03, +0.01: the hand-computed example / 10
    assert par.pairs == 4 and par.pair_mean == pytest.approx(0.0175)
    assert par.pair_std == pytest.approx(0.02986079, abs=1e-8)
    assert par.pair_lo == pytest.approx(0.0175 - 0.0475152, abs=1e-6)
    assert par.pair_hi == pytest.approx(0.0175 + 0.0475152, abs=1e-6)
    assert par.acc_delta == pytest.approx(0.0175)                          # every run paired: the same mean
    assert slow.pairs == 2 and slow.pair_mean == pytest.approx(-0.15)       # seed 7 has no original: left out
    assert slow.pair_std == pytest.approx(math.sqrt(0.005))
    half = 12.706205 * math.sqrt(0.005) / math.sqrt(2)
    assert slow.pair_lo == pytest.approx(-0.15 - half, abs=1e-5)
    assert slow.pair_hi == pytest.approx(-0.15 + half, abs=1e-5)
    other = by[(2, 1, "r@1", True)]                                         # its own recipe's original only
    assert other.pairs == 1 and other.pair_mean == pytest.approx(0.1) and other.pair_std is None
    assert other.base_val_acc == pytest.approx(0.5)


def test_label_smoothing_is_part_of_the_recipe_and_runs_from_before_it_ran_without():
    def smoothed(r, value):
        return RunSummary(r.run_id + "ls", dict(r.params, label_smoothing=value), r.seed, r.best_val_acc,
                          r.final_val_acc, r.epoch_time_s, r.samples_per_s, r.history)
    # the originals smoothed, the parareal runs not: nothing to pair with
    table = rows([smoothed(r, "0.1") for r in BASE] + PAR)
    assert len(table) == 2 and all(r.pairs is None for r in table)
    # runs logged before the option existed group with label_smoothing 0.0
    base, par = sorted(rows([smoothed(r, "0.0") for r in BASE] + PAR), key=lambda r: r.n)
    assert par.pairs == 4 and par.pair_mean == pytest.approx(0.0175)


def test_time_to_the_originals_accuracy_on_the_mean_curves():
    table = rows(BASE + PAR + SLOW)
    base, par, slow = sorted(table, key=lambda r: r.n)
    assert base.reaches_base_acc and base.time_to_base_acc_s == pytest.approx(6.0)   # its mean curve: epoch 3 x 2 s
    assert par.reaches_base_acc and par.time_to_base_acc_s == pytest.approx(2.0)     # mean 0.8825 at epoch 2 x 1 s
    assert slow.reaches_base_acc is False and slow.time_to_base_acc_s is None        # never
    assert base.epoch_time_s == 2.0 and par.epoch_time_s == 1.0


def test_without_an_original_there_is_nothing_to_pair():
    (row,) = rows(PAR)
    assert row.pairs is None and row.base_val_acc is None and row.reaches_base_acc is None and row.speedup is None


def test_runs_from_before_cross_validation_pair_by_seed():
    old = [RunSummary(r.run_id, {k: v for k, v in r.params.items() if k not in ("fold", "folds")}, r.seed,
                      r.best_val_acc, r.final_val_acc, r.epoch_time_s, r.samples_per_s, r.history)
           for r in (BASE[0], BASE[2], PAR[3], PAR[2])]                     # fold 0 of seeds 0 and 1
    base, par = rows(old)
    assert base.folds == 0 and par.pairs == 2 and par.pair_mean == pytest.approx(0.04)


def test_the_paired_columns_in_every_format():
    table = rows(BASE + PAR + SLOW)
    md = compare.markdown(table).splitlines()
    assert md[0].startswith("| model | dataset | N | K | R | recipe | seeds | folds |")
    assert md[0].endswith("| pairs | paired diff | 95% CI | time to base acc |")
    assert md[2].endswith("| - | - | - | 6.0 s |")                          # the original
    assert md[3].endswith("| 4 | +1.75 ± 2.99 | [-3.00, +6.50] | 2.0 s |")
    assert md[4].endswith("| 2 | -15.00 ± 7.07 | [-78.53, +48.53] | never |")
    paired_md = compare.paired_markdown(table).splitlines()
    assert paired_md[0] == ("| model | dataset | N | K | R | recipe | folds | original acc | final val acc | pairs | "
                            "paired diff | 95% CI | s/epoch | time to base acc |")
    assert paired_md[3] == ("| vgg11 x0.25 | digits | 2 | 1 | 1 | r@1 | 2 | 87.50 | 89.25 ± 8.30 | 4 | +1.75 ± 2.99 | "
                            "[-3.00, +6.50] | 1.0 | 2.0 s |")
    data = json.loads(compare.render(table, "json"))
    assert data[1]["pairs"] == 4 and data[1]["pair_mean"] == pytest.approx(0.0175)
    assert data[2]["time_to_base_acc_s"] is None and data[2]["reaches_base_acc"] is False
    assert data[0]["folds"] == 2 and data[0]["runs"] == 4
    rows_csv = list(csv.DictReader(io.StringIO(compare.render(table, "csv"))))
    assert rows_csv[1]["pair_lo"] and float(rows_csv[1]["pair_lo"]) == pytest.approx(-0.0300152, abs=1e-6)
    assert list(rows_csv[0])[:7] == ["model", "dataset", "n", "k", "replicas", "recipe", "seeds"]


@pytest.mark.parametrize("dataset, says", [
    ("cifar10", "The official test split is the test set, untouched"),
    ("digits", "the test set stays untouched")])
def test_the_study_report_says_what_the_accuracy_measures(dataset, says):
    base = TrainConfig.from_flat(dataset=dataset, folds=2, epochs=3)
    text = study.report(rows(BASE + PAR), base, "st", "parent-id", [0, 1])
    assert "validation accuracy on the held-out fold" in text and says in text
    assert "## Accuracy against the original network" in text
    assert "| vgg11 x0.25 | digits | 2 | 1 | 1 | r@1 | 2 | 87.50 | 89.25 ± 8.30 | 4 | +1.75 ± 2.99 |" in text
    plain = study.report(rows(BASE + PAR), TrainConfig.from_flat(dataset=dataset), "st", "p", [0])
    assert "accuracy on the held-out fold" not in plain and "validation split" in plain
