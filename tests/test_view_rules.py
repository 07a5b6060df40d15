"""The views' pure rules by hand: outliers, the cut axis, tiny layers, log ticks."""
import numpy as np
import pytest

import losswidget
from losswidget.widget import rules

from helpers import outlier_cnn, save


def test_outlier_by_hand():
    # log10 values: -0.2 -0.1 -0.05 0 0 0.05 0.1 0.2 3 -> median 0, MAD 0.1, scale 0.1/0.6745 = 0.1483;
    # z(3) = 20.2 > 3.5 and it stands 2.8/0.1483 = 18.9 z units above 0.2; z(0.2) = 1.35
    x = np.array([-0.2, -0.1, -0.05, 0, 0, 0.05, 0.1, 0.2, 3.0])
    assert rules.outliers(10 ** x).tolist() == [False] * 8 + [True]
    x[-1] = 0.7                                       # z = 4.72 and 3.37 units above 0.2: still one
    assert rules.outliers(10 ** x).tolist() == [False] * 8 + [True]
    x[-1] = 0.5                                       # z = 3.37: not an outlier
    assert not rules.outliers(10 ** x).any()


def test_outliers_are_never_split_among_near_ties():
    rng = np.random.default_rng(1)
    values = np.concatenate([10 ** rng.uniform(-3, -2, 61), [0.1110, 0.1108, 0.1107]])
    flagged = rules.outliers(values)
    assert flagged.tolist() == [False] * 61 + [True] * 3
    # 40 values evenly over [-0.2, 0.2] (log10) plus two: median 0.0103, MAD 0.1077, scale 0.1597
    x = np.concatenate([np.linspace(-0.2, 0.2, 40), [0.8, 0.85]])
    assert rules.outliers(10 ** x).tolist() == [False] * 40 + [True, True]    # z 4.9 and 5.3, 3.8 above 0.2
    x[-2] = 0.3                                       # z 1.8; 0.85 stands 3.4 z units above it: alone
    assert rules.outliers(10 ** x).tolist() == [False] * 41 + [True]
    x[-2:] = [0.55, 0.6]                              # z 3.38 and 3.69, 0.31 units apart: not split, none
    assert not rules.outliers(10 ** x).any()


def test_ties_and_groups_are_not_outliers():
    ties = np.concatenate([np.linspace(0.001, 0.002, 40), np.full(24, 0.111)])
    assert not rules.outliers(ties).any()             # 24 of 64 is a group, not outliers
    assert not rules.outliers(np.full(64, 0.3)).any()
    # over half the values tie (MAD = 0): the mean absolute deviation stands in
    one = np.concatenate([np.full(63, 1.6889), [60.8]])
    assert rules.outliers(one).tolist() == [False] * 63 + [True]
    assert not rules.outliers([0.1, 0.1, 0.1, 50.0]).any()          # fewer than 8 layers: no verdict


def test_zero_negative_and_nan_values_are_never_outliers():
    v = np.concatenate([np.linspace(0.01, 0.02, 20), [0.0, -5.0, np.nan, 40.0]])
    assert np.flatnonzero(rules.outliers(v)).tolist() == [23]


def test_axis_cut_only_when_an_outlier_would_flatten_the_rest():
    assert rules.axis_cut([1.0, 2.0, 1.5, 10.0], [False, False, False, True]) == pytest.approx(2.0 * 1.15)
    assert rules.axis_cut([1.0, 2.0, 1.5, 5.0], [False, False, False, True]) is None       # 2.5x: drawn whole
    assert rules.axis_cut([1.0, 2.0, 1.5, 10.0], [False] * 4) is None
    assert rules.axis_cut([0.0, 0.0, 10.0], [False, False, True]) is None


def test_tiny_layers():
    assert rules.tiny([16, 2304, 2304, 1000, 5000]).tolist() == [True, False, False, False, False]
    assert rules.tiny([20, 2000]).tolist() == [False, False]      # 1% of the median (1010) is 10.1
    assert not rules.tiny([5]).any()


def test_log_axis_values_and_ticks():
    floor = rules.log_floor([0.0, 0.03, 3.0, -1.0])
    assert floor == pytest.approx(np.log10(0.01))
    y = rules.log_values([0.0, 0.03, 3.0, -1.0, np.nan], floor)
    np.testing.assert_allclose(y, [-2, np.log10(0.03), np.log10(3), -2, -2])
    ticks, labels = rules.log_ticks(-2, np.log10(3))
    assert [labels[t] for t in ticks] == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]
    ticks, labels = rules.log_ticks(-6, 2.2)                            # too many for 1-2-5: decades only
    assert [labels[t] for t in ticks] == ["1e-6", "1e-5", "1e-4", "0.001", "0.01", "0.1", "1", "10", "100"]
    assert rules.log_ticks(0.0, -1.0) == ([], {})


def test_short_numbers():
    assert [rules.short(x) for x in (0.05, 60.8, 0.0000123, 1234.0, 12345.0, 0.0, float("nan"))] == \
        ["0.05", "60.8", "1.23e-5", "1234", "1.23e4", "0", "n/a"]
    assert [rules.short(x) for x in (0.0000754, -0.000356, 0.00841, -0.00195, 0.001, 0.00075, 2e-7)] == \
        ["7.54e-5", "-3.56e-4", "0.00841", "-0.00195", "0.001", "7.5e-4", "2e-7"]


def test_scaled_normalised_and_slope():
    np.testing.assert_allclose(rules.scaled([1.0, 3.0, np.nan], "percent"), [0.25, 0.75, 0.0])
    np.testing.assert_allclose(rules.normalised([-4.0, 2.0]), [-1.0, 0.5])
    np.testing.assert_allclose(rules.normalised([1.0, 2.0, 50.0], [False, False, True]), [0.5, 1.0, 25.0])
    assert rules.scale_of([0.0, 0.0]) == 1.0
    assert rules.loglog_slope([10, 100, 1000], [1.0, 0.1, 0.01]) == pytest.approx(-1.0)
    assert rules.loglog_slope([10, 10, 10], [1.0, 0.1, 0.01]) is None
    assert rules.loglog_slope([10, 100], [1.0, 0.1]) is None


def test_outlier_model_flags_the_tiny_fixed_layer(tmp_path):
    path = save(outlier_cnn(), tmp_path / "outlier.onnx")
    approx = losswidget.analyze(path, method="approximated")
    params = [l.params for l in approx.layers]
    assert np.flatnonzero(rules.tiny(params)).tolist() == [20] and params[20] == 16
    assert np.flatnonzero(rules.outliers(approx.sensitivities)).tolist() == [20]
    cut = rules.axis_cut(approx.sensitivities, rules.outliers(approx.sensitivities))
    assert cut == pytest.approx(np.delete(approx.sensitivities, 20).max() * 1.15)
    magnitude = losswidget.analyze(path, method="magnitude")      # 0.5 weights: the top, but not apart
    assert not rules.outliers(magnitude.sensitivities).any()


def test_nice_ticks():
    assert rules.nice_ticks(0, 1.068) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert rules.nice_ticks(-0.02, 0.31, 4) == [0, 0.1, 0.2, 0.3]
    assert rules.nice_ticks(0, 2304 * 1.04, 4) == [0, 500, 1000, 1500, 2000]
    assert rules.nice_ticks(1.0, 1.0) == []
