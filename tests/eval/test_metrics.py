"""Metrics against scikit-learn and against hand-counted examples."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from s2mts2.errors import ConfigError, DataError
from s2mts2.eval.metrics import (
    MetricAccumulator,
    auc,
    bootstrap_ci,
    evaluate_predictions,
    mean_auc,
    multiclass_metrics,
    per_class_auc,
    src_mt_metrics,
    threshold_evaluation,
    thresholded_metrics,
    uses_src_mt_classes,
    youden_threshold,
    youden_thresholds,
)
from s2mts2.eval.metrics import confusion_matrix as our_confusion_matrix

CLASSES7 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def multiclass_data(n: int, c: int, seed: int, signal: float = 1.5):
    """Softmax probs (n, c) and one-hot labels (n, c) with some signal and every class present."""
    rng = np.random.default_rng(seed)
    truth = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    onehot = np.eye(c)[truth]
    logits = rng.normal(size=(n, c)) + signal * onehot
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, onehot


# --- auc -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + 0.7 * targets, 1)  # many ties
    assert len(np.unique(scores)) < 100
    assert auc(scores, targets) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)


def test_auc_hand_counted_ties():
    # pairs (pos, neg): (0.4,0.1)=1, (0.4,0.4)=0.5, (0.9,0.1)=1, (0.9,0.4)=1 -> 3.5 / 4
    assert auc([0.1, 0.4, 0.4, 0.9], [0, 0, 1, 1]) == 0.875
    assert auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5


def test_auc_perfect_and_inverted():
    targets = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auc(scores, targets) == 1.0
    assert auc(-scores, targets) == 0.0


def test_auc_single_class_is_none():
    assert auc([0.1, 0.2, 0.3], [1, 1, 1]) is None
    assert auc([0.1, 0.2, 0.3], [0, 0, 0]) is None
    assert auc([], []) is None


def test_auc_rejects_bad_input():
    with pytest.raises(DataError, match="0 or 1"):
        auc([0.1, 0.2], [0, -1])
    with pytest.raises(DataError, match="NaN"):
        auc([0.1, np.nan], [0, 1])
    with pytest.raises(DataError, match="shape"):
        auc([0.1, 0.2, 0.3], [0, 1])


# --- per-class and mean AUC ---------------------------------------------------------------------


def test_per_class_auc_masks_unknown_labels_per_class():
    rng = np.random.default_rng(1)
    n, c = 200, 4
    labels = rng.integers(0, 2, (n, c)).astype(float)
    probs = np.round(rng.random((n, c)) * 0.6 + 0.4 * labels, 2)
    labels[rng.random((n, c)) < 0.3] = np.nan
    labels[:, 3] = np.where(np.isnan(labels[:, 3]), np.nan, 0.0)  # no positives among the known
    got = per_class_auc(probs, labels)
    for k in range(3):
        known = ~np.isnan(labels[:, k])
        assert got[k] == pytest.approx(roc_auc_score(labels[known, k], probs[known, k]), abs=1e-12)
        # a wrong implementation that treated NaN as negative would differ
        assert got[k] != pytest.approx(roc_auc_score(np.nan_to_num(labels[:, k]), probs[:, k]))
    assert got[3] is None


def test_per_class_auc_rejects_uncertain_labels():
    with pytest.raises(DataError, match=r"row 1, column 0 holds -1"):
        per_class_auc(np.zeros((2, 1)), np.array([[1.0], [-1.0]]))


def test_mean_auc_over_eval_classes_skips_none():
    classes = ["a", "b", "No Finding", "d"]
    per_class = [0.6, None, 0.99, 0.8]
    assert mean_auc(per_class, classes, ["a", "b", "d"]) == pytest.approx(0.7)
    assert mean_auc(per_class, classes) == pytest.approx((0.6 + 0.99 + 0.8) / 3)
    assert mean_auc([None, None], ["a", "b"]) is None
    with pytest.raises(ConfigError, match="Mass"):
        mean_auc(per_class, classes, ["a", "Mass"])


# --- multi-class --------------------------------------------------------------------------------


def test_multiclass_metrics_match_sklearn():
    probs, onehot = multiclass_data(400, 7, seed=2)
    truth, pred = onehot.argmax(1), probs.argmax(1)
    m = multiclass_metrics(probs, onehot)

    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert m["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert m["precision"] == pytest.approx(precision_score(truth, pred, average="macro"))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(truth, probs, multi_class="ovr"))
    recall = recall_score(truth, pred, average=None)
    np.testing.assert_allclose(m["per_class_sensitivity"], recall)
    np.testing.assert_allclose(m["per_class_f1"], f1_score(truth, pred, average=None))

    cm = confusion_matrix(truth, pred, labels=range(7))
    for k in range(7):
        negatives = np.delete(np.arange(7), k)
        true_negative = cm[np.ix_(negatives, negatives)].sum()
        false_positive = cm[negatives, k].sum()
        expected = true_negative / (true_negative + false_positive)
        assert m["per_class_specificity"][k] == pytest.approx(expected)
    assert m["specificity"] == pytest.approx(np.mean(m["per_class_specificity"]))
    assert m["sensitivity"] == pytest.approx(m["balanced_accuracy"])


def test_multiclass_absent_and_never_predicted_classes():
    # class 2 never occurs; class 1 occurs but is never predicted
    truth = np.array([0, 0, 1, 1, 0, 3, 3, 3])
    pred = np.array([0, 2, 0, 0, 0, 3, 3, 0])
    probs = np.eye(4)[pred] * 0.7 + 0.1
    m = multiclass_metrics(probs, np.eye(4)[truth])
    assert m["per_class_sensitivity"][2] is None
    assert m["per_class_precision"][1] == 0.0
    assert m["per_class_auc"][2] is None
    assert m["per_class_sensitivity"][1] == 0.0 and m["per_class_sensitivity"][3] == 2 / 3
    with pytest.warns(UserWarning, match="not in y_true"):
        balanced = balanced_accuracy_score(truth, pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced)
    zero = {"zero_division": 0}
    assert m["f1"] == pytest.approx(f1_score(truth, pred, average="macro", **zero))
    assert m["precision"] == pytest.approx(precision_score(truth, pred, average="macro", **zero))
    assert m["accuracy"] == 4 / 8


@pytest.mark.parametrize("threshold", [0.18, 0.5])
def test_src_mt_metrics_are_sklearn_one_vs_rest_at_the_threshold(threshold):
    probs, onehot = multiclass_data(400, 7, seed=4)
    m = src_mt_metrics(probs, onehot, threshold=threshold)
    zero = {"zero_division": 0}
    expected: dict[str, list[float]] = {k: [] for k in ("accuracy", "sensitivity", "f1")}
    expected |= {"specificity": [], "precision": []}
    for k in range(7):  # SRC-MT's released evaluation: a binary problem per class
        truth, pred = onehot[:, k], probs[:, k] >= threshold
        expected["accuracy"].append(accuracy_score(truth, pred))
        expected["sensitivity"].append(recall_score(truth, pred))
        expected["specificity"].append(recall_score(1 - truth, ~pred))
        expected["precision"].append(precision_score(truth, pred, **zero))
        expected["f1"].append(f1_score(truth, pred))
    assert m["threshold"] == threshold
    for key, values in expected.items():
        np.testing.assert_allclose(m[f"per_class_{key}"], values, rtol=1e-12)
        assert m[key] == pytest.approx(np.mean(values))
    # not the argmax metrics: at 0.18 an image may carry several classes or none
    assert m["accuracy"] != pytest.approx(multiclass_metrics(probs, onehot)["accuracy"])


def test_src_mt_metrics_reported_by_evaluate_for_the_isic2018_classes_only():
    probs, onehot = multiclass_data(80, 7, seed=5)
    shuffled = CLASSES7[::-1]  # the same classes in another order
    for classes in (CLASSES7, shuffled):
        result = evaluate_predictions(probs, onehot, classes=classes, task="multiclass", n_boot=0)
        direct = src_mt_metrics(probs, onehot)
        assert result["src_mt"] == {k: v for k, v in direct.items() if not k.startswith("per_")}
    assert uses_src_mt_classes(shuffled) and not uses_src_mt_classes(CLASSES7[:6])
    other = [*CLASSES7[:6], "SCC"]
    assert "src_mt" not in evaluate_predictions(
        probs, onehot, classes=other, task="multiclass", n_boot=0
    )
    probs, onehot = multiclass_data(60, 3, seed=5)
    for task in ("multiclass", "multilabel"):
        assert "src_mt" not in evaluate_predictions(
            probs, onehot, classes=list("abc"), task=task, n_boot=0
        )
    with pytest.raises(ConfigError, match="threshold"):
        src_mt_metrics(probs, onehot, threshold=1.0)
    at = np.array([[0.18, 0.5, 0.32], [0.1, 0.72, 0.18]])  # p = threshold counts as predicted
    m = src_mt_metrics(at, np.eye(3)[[0, 1]])
    assert m["per_class_sensitivity"][0] == 1.0 and m["per_class_precision"][2] == 0.0
    with pytest.raises(DataError, match="src_mt_metrics: labels must be one-hot"):
        src_mt_metrics(probs, onehot * 2)


def test_confusion_matrix_equals_sklearns_and_is_reported():
    probs, onehot = multiclass_data(300, 5, seed=6, signal=1.0)
    truth, pred = onehot.argmax(axis=1), probs.argmax(axis=1)
    expected = confusion_matrix(truth, pred, labels=range(5))
    np.testing.assert_array_equal(our_confusion_matrix(truth, pred, 5), expected)
    assert multiclass_metrics(probs, onehot)["confusion_matrix"] == expected.tolist()
    result = evaluate_predictions(probs, onehot, classes=list("abcde"), task="multiclass", n_boot=0)
    assert result["confusion_matrix"] == expected.tolist()
    assert "confusion_matrix" not in evaluate_predictions(
        probs, onehot, classes=list("abcde"), n_boot=0
    )
    # a class never predicted and one never present keep their rows and columns
    small = our_confusion_matrix([0, 0, 2], [2, 0, 2], 4)
    assert small.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(DataError, match="0..3"):
        our_confusion_matrix([0, 4], [0, 1], 4)


# --- per-class thresholds ------------------------------------------------------------------------


def brute_force_youden(scores, targets):
    """(best J, the highest threshold reaching it) over sklearn's ROC points, every threshold
    kept (drop_intermediate=False); the first point (threshold inf, nothing predicted) left out."""
    fpr, tpr, thresholds = roc_curve(targets, scores, drop_intermediate=False)
    j = tpr[1:] - fpr[1:]
    best = int(np.argmax(j))  # thresholds decrease: the first maximum is the highest threshold
    return j[best], thresholds[1:][best]


def j_at(scores, targets, threshold):
    pred = scores >= threshold
    return recall_score(targets, pred) - (1 - recall_score(1 - targets, ~pred))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rounded", [False, True])
def test_youden_threshold_is_the_brute_force_optimum_of_sklearns_roc_curve(seed, rounded):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + 0.8 * targets
    if rounded:  # many tied scores
        scores = np.round(scores, 1)
    best_j, best_threshold = brute_force_youden(scores, targets)
    got = youden_threshold(scores, targets)
    assert got == best_threshold
    assert j_at(scores, targets, got) == pytest.approx(best_j)


def test_youden_thresholds_per_class_with_unknown_labels():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, (150, 3)).astype(float)
    labels[:40, 0] = np.nan
    labels[:, 2] = 0.0  # no positives: no threshold
    probs = rng.random((150, 3)) * 0.6 + 0.4 * np.nan_to_num(labels)
    got = youden_thresholds(probs, labels)
    known = ~np.isnan(labels[:, 0])
    assert got[0] == brute_force_youden(probs[known, 0], labels[known, 0])[1]
    assert got[1] == brute_force_youden(probs[:, 1], labels[:, 1])[1]
    assert got[2] is None
    assert youden_threshold([0.2, 0.9], [1, 1]) is None
    # J = 1 at 0.6 and at 0.7 (both separate the classes): the higher one is chosen
    assert youden_threshold([0.1, 0.3, 0.6, 0.7], [0, 0, 1, 1]) == 0.6
    with pytest.raises(DataError, match="youden_threshold"):
        youden_threshold([0.1, 0.2], [0, 2])


def test_thresholded_metrics_are_sklearns_per_class_on_the_known_labels():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, (120, 3)).astype(float)
    labels[::7, 1] = np.nan
    probs = rng.random((120, 3)) * 0.5 + 0.5 * np.nan_to_num(labels)
    thresholds = [0.4, 0.55, 0.7]
    m = thresholded_metrics(probs, labels, thresholds)
    zero = {"zero_division": 0}
    for c, t in enumerate(thresholds):
        known = ~np.isnan(labels[:, c])
        y, pred = labels[known, c], probs[known, c] >= t
        assert m["per_class_sensitivity"][c] == pytest.approx(recall_score(y, pred))
        assert m["per_class_specificity"][c] == pytest.approx(recall_score(1 - y, ~pred))
        assert m["per_class_precision"][c] == pytest.approx(precision_score(y, pred, **zero))
        assert m["per_class_f1"][c] == pytest.approx(f1_score(y, pred))
        assert m["per_class_accuracy"][c] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(np.mean(m["per_class_f1"]))
    with pytest.raises(DataError, match="3 finite thresholds"):
        thresholded_metrics(probs, labels, [0.5, 0.5])


def test_threshold_evaluation_chooses_on_the_reference_and_scores_the_evaluated_set():
    rng = np.random.default_rng(9)
    ref_labels = rng.integers(0, 2, (200, 3)).astype(float)
    ref_labels[:, 2] = 1.0  # the reference cannot place class c: no threshold, no metrics
    ref_probs = rng.random((200, 3)) * 0.5 + 0.4 * ref_labels
    labels = rng.integers(0, 2, (100, 3)).astype(float)
    probs = rng.random((100, 3)) * 0.5 + 0.4 * labels
    got = threshold_evaluation(ref_probs, ref_labels, probs, labels, ["a", "b", "c"])
    assert got["method"] == "youden"
    for c, name in enumerate(["a", "b"]):
        t = brute_force_youden(ref_probs[:, c], ref_labels[:, c])[1]
        entry = got["per_class"][name]
        assert entry["threshold"] == t
        pred = probs[:, c] >= t
        assert entry["sensitivity"] == pytest.approx(recall_score(labels[:, c], pred))
        assert entry["specificity"] == pytest.approx(recall_score(1 - labels[:, c], ~pred))
        assert entry["f1"] == pytest.approx(f1_score(labels[:, c], pred))
    assert got["per_class"]["c"] == dict.fromkeys(
        ("threshold", "sensitivity", "specificity", "precision", "f1")
    )
    assert got["f1"] == pytest.approx(np.mean([got["per_class"][n]["f1"] for n in ("a", "b")]))
    # chosen on the evaluated set itself, the thresholds are its own optimum: J is at least that
    # of the reference's thresholds for every class
    own = threshold_evaluation(probs, labels, probs, labels, ["a", "b", "c"])
    for name in ("a", "b"):
        j_own = own["per_class"][name]["sensitivity"] + own["per_class"][name]["specificity"]
        j_ref = got["per_class"][name]["sensitivity"] + got["per_class"][name]["specificity"]
        assert j_own >= j_ref - 1e-12


def test_multiclass_rejects_non_onehot():
    with pytest.raises(DataError, match="one-hot"):
        multiclass_metrics(np.full((2, 3), 1 / 3), np.array([[1, 0, 0], [1, 1, 0]]))


# --- bootstrap ------------------------------------------------------------------------------------


def auc_of_column0(probs, labels):
    return auc(probs[:, 0], labels[:, 0])


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (500, 1)).astype(float)
    probs = rng.normal(size=(500, 1)) + labels
    point = auc_of_column0(probs, labels)
    low, high = bootstrap_ci(probs, labels, auc_of_column0, n_boot=300, seed=7)
    assert low < point < high
    assert 0.02 < high - low < 0.2  # ~ 4 standard errors of an AUC on 500 samples
    assert bootstrap_ci(probs, labels, auc_of_column0, n_boot=300, seed=7) == (low, high)
    assert bootstrap_ci(probs, labels, auc_of_column0, n_boot=300, seed=8) != (low, high)
    narrow = bootstrap_ci(probs, labels, auc_of_column0, n_boot=300, seed=7, alpha=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_resamples_whole_groups():
    sizes = np.array([1, 2, 3, 4, 5, 6])
    groups = np.repeat(np.array(["p1", "p2", "p3", "p4", "p5", "p6"]), sizes)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(groups))  # members of a group are not contiguous
    groups = groups[order]
    group_index = np.repeat(np.arange(6), sizes)[order].astype(float)
    probs = group_index[:, None]
    seen = []

    def check(p, _labels):
        counts = np.bincount(p[:, 0].astype(int), minlength=6)
        assert np.all(counts % sizes == 0), counts  # every chosen patient comes with all images
        assert (counts // sizes).sum() == 6  # 6 patients drawn per replicate
        seen.append(len(p))
        return float(len(p))

    bootstrap_ci(probs, np.zeros_like(probs), check, groups=groups, n_boot=50)
    assert len(seen) == 50 and len(set(seen)) > 3  # image count varies with the patients drawn


def test_paired_difference_is_a_bootstrap_of_both_models_on_the_same_images():
    """Against a direct computation: sklearn's mean AUC of each model on the same resampled
    rows (the sampler draws rows with numpy's generator as bootstrap_ci does), percentiles of
    the per-replicate differences."""
    from s2mts2.data.table import DatasetTable
    from s2mts2.eval.metrics import paired_auc_difference

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, (300, 3)).astype(float)
    good = rng.normal(size=(300, 3)) + 1.5 * labels
    weak = rng.normal(size=(300, 3)) + 0.5 * labels
    table = DatasetTable(
        name="t",
        paths=[f"{i}.png" for i in range(300)],
        labels=labels,
        classes=["a", "b", "c"],
        task="multilabel",
        groups=np.arange(300).astype(str),
        split=np.array(["test"] * 300),
        channels=1,
    )
    got = paired_auc_difference(good, weak, labels, table, n_boot=200, seed=3)

    def mean_auc_of(p, y):
        return np.mean([roc_auc_score(y[:, c], p[:, c]) for c in range(3)])

    assert got["mean_auc_a"] == pytest.approx(mean_auc_of(good, labels))
    assert got["difference"] == pytest.approx(mean_auc_of(good, labels) - mean_auc_of(weak, labels))
    draws = np.random.default_rng(3)
    diffs = []
    for _ in range(200):
        rows = draws.integers(0, 300, 300)
        diffs.append(mean_auc_of(good[rows], labels[rows]) - mean_auc_of(weak[rows], labels[rows]))
    np.testing.assert_allclose(got["difference_ci95"], np.quantile(diffs, [0.025, 0.975]))
    assert 0 < got["difference_ci95"][0] < got["difference"] < got["difference_ci95"][1]
    with pytest.raises(DataError, match="differ"):
        paired_auc_difference(good, weak[:, :2], labels, table)


def test_bootstrap_skips_undefined_replicates():
    labels = np.array([[1.0], [0.0], [0.0], [0.0], [0.0]])  # one positive: often absent
    probs = np.array([[0.9], [0.1], [0.2], [0.3], [0.4]])
    low, high = bootstrap_ci(probs, labels, auc_of_column0, n_boot=100)
    assert low == high == 1.0
    none = bootstrap_ci(probs[1:], labels[1:], auc_of_column0, n_boot=10)
    assert none == (None, None)


def test_bootstrap_rejects_bad_options():
    x = np.zeros((4, 1))
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_ci(x, x, auc_of_column0, n_boot=0)
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci(x, x, auc_of_column0, alpha=1.5)
    with pytest.raises(DataError, match="groups"):
        bootstrap_ci(x, x, auc_of_column0, groups=[1, 2])


# --- evaluate_predictions / accumulator --------------------------------------------------------


def test_evaluate_multilabel_json_and_null_for_missing_positives():
    rng = np.random.default_rng(4)
    classes = ["Atelectasis", "Hernia", "No Finding"]
    labels = rng.integers(0, 2, (120, 3)).astype(float)
    labels[:, 1] = 0.0  # Hernia: no positives in this split
    labels[:5, 0] = np.nan
    # noisy scores: Atelectasis AUC well above 0.5, "No Finding" (left out) well below
    signal = np.array([0.6, 0.0, -0.6])
    probs = np.clip(rng.random((120, 3)) * 0.7 + signal * np.nan_to_num(labels), 0, 1)
    groups = np.repeat(np.arange(40), 3)
    out = evaluate_predictions(
        probs,
        labels,
        classes=classes,
        eval_classes=["Atelectasis", "Hernia"],
        task="multilabel",
        groups=groups,
        n_boot=200,
    )
    text = json.dumps(out)
    assert '"Hernia": null' in text
    assert out["per_class_auc"]["Hernia"] is None
    known = ~np.isnan(labels[:, 0])
    atelectasis = roc_auc_score(labels[known, 0], probs[known, 0])
    assert 0.7 < atelectasis < 0.99 and roc_auc_score(labels[:, 2], probs[:, 2]) < 0.3
    assert out["per_class_auc"]["Atelectasis"] == pytest.approx(atelectasis)
    assert out["mean_auc"] == pytest.approx(atelectasis)  # eval classes with positives only
    assert out["positives"] == {
        name: int(np.sum(labels[:, i] == 1)) for i, name in enumerate(classes)
    }
    assert out["n_images"] == 120 and out["task"] == "multilabel"
    low, high = out["mean_auc_ci95"]
    assert low <= out["mean_auc"] <= high and high - low > 0.02

    # the CI resamples patients (3 images each) over the eval classes' columns
    def atelectasis_auc(p, y):  # the only eval class with positives
        return roc_auc_score(y[~np.isnan(y[:, 0]), 0], p[~np.isnan(y[:, 0]), 0])

    grouped = bootstrap_ci(probs, labels, atelectasis_auc, groups=groups, n_boot=200)
    assert out["mean_auc_ci95"] == pytest.approx(list(grouped))
    per_image = bootstrap_ci(probs, labels, atelectasis_auc, n_boot=200)
    assert list(per_image) != pytest.approx(list(grouped))
    assert "accuracy" not in out
    assert evaluate_predictions(probs, labels, classes=classes, n_boot=0)["mean_auc_ci95"] is None


def test_evaluate_multiclass_keys_and_values():
    probs, onehot = multiclass_data(300, 7, seed=5)
    out = evaluate_predictions(
        probs, onehot, classes=CLASSES7, eval_classes=CLASSES7, task="multiclass", n_boot=100
    )
    json.dumps(out)
    m = multiclass_metrics(probs, onehot)
    assert out["macro_auc"] == out["mean_auc"] == pytest.approx(m["macro_auc"])
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1"):
        assert out[key] == m[key]
    assert out["per_class"]["DF"]["sensitivity"] == m["per_class_sensitivity"][5]
    assert set(out["per_class"]["MEL"]) == {"auc", "sensitivity", "specificity", "precision", "f1"}


def test_evaluate_rejects_bad_arguments():
    probs, onehot = multiclass_data(20, 3, seed=0)
    with pytest.raises(ConfigError, match="task"):
        evaluate_predictions(probs, onehot, classes=["a", "b", "c"], task="segmentation")
    with pytest.raises(DataError, match="3 columns for 2 classes"):
        evaluate_predictions(probs, onehot, classes=["a", "b"], n_boot=0)


def test_accumulator_matches_one_shot_evaluation():
    probs, onehot = multiclass_data(90, 3, seed=6)
    acc = MetricAccumulator(["a", "b", "c"], task="multiclass")
    for start in range(0, 90, 32):
        batch = slice(start, start + 32)
        acc.update(torch.tensor(probs[batch]), torch.tensor(onehot[batch].argmax(1)))
    assert len(acc) == 90
    got = acc.aggregate(n_boot=20)
    expected = evaluate_predictions(
        probs, onehot, classes=["a", "b", "c"], task="multiclass", n_boot=20
    )
    assert got == expected
    acc.reset()
    assert len(acc) == 0
    with pytest.raises(DataError, match="no predictions"):
        acc.aggregate()
    with pytest.raises(DataError, match=r"shape \(B, 3\)"):
        acc.update(np.zeros((2, 4)), np.zeros((2, 4)))


def _table_of(labels: np.ndarray):
    from s2mts2.data.table import DatasetTable

    n, c = labels.shape
    return DatasetTable(
        name="t",
        paths=[f"{i}.png" for i in range(n)],
        labels=labels,
        classes=[f"c{k}" for k in range(c)],
        task="multilabel",
        groups=np.arange(n).astype(str),
        split=np.array(["test"] * n),
        channels=1,
    )


def _pairwise_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """AUC by comparing every positive with every negative (ties count ½): no ranks."""
    pos, neg = scores[targets == 1], scores[targets == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _seeds_paired_brute_force(a, b, labels, groups, n_boot, rng):
    """Mean over seeds of the per-seed mean-AUC difference, and the percentiles of replicates
    that draw seeds with replacement and whole groups with replacement, written out in loops."""

    def mean_auc(p, y):
        return np.mean([_pairwise_auc(p[:, k], y[:, k]) for k in range(y.shape[1])])

    n_seeds = len(a)
    estimate = np.mean([mean_auc(a[s], labels) - mean_auc(b[s], labels) for s in range(n_seeds)])
    members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    names = list(members)
    replicates = []
    for _ in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        rows = np.concatenate([members[names[i]] for i in rng.integers(0, len(names), len(names))])
        y = labels[rows]
        replicates.append(
            np.mean([mean_auc(a[s][rows], y) - mean_auc(b[s][rows], y) for s in seeds])
        )
    return estimate, np.quantile(replicates, [0.025, 0.975])


def test_seeds_paired_difference_matches_a_brute_force_bootstrap_over_seeds_and_groups():
    """Point estimates exactly; the CI within Monte-Carlo error of an independent loop version
    (its own draws), with lesions of 1-3 images resampled whole."""
    from s2mts2.eval.metrics import seeds_paired_auc_difference

    rng = np.random.default_rng(11)
    n, c, n_seeds = 240, 2, 3
    groups = np.repeat(np.arange(120), rng.integers(1, 4, 120))[:n]
    labels = (rng.random((n, c)) < 0.4).astype(float)
    # per seed a different gain of a over b: seed spread and test noise both matter
    a = np.stack([labels * (1.0 + 0.4 * s) + rng.normal(size=(n, c)) for s in range(n_seeds)])
    b = np.stack([labels * 1.0 + rng.normal(size=(n, c)) for _ in range(n_seeds)])
    table = _table_of(labels)
    got = seeds_paired_auc_difference(a, b, labels, table, groups=groups, n_boot=2000, seed=5)
    estimate, ci = _seeds_paired_brute_force(a, b, labels, groups, 2000, np.random.default_rng(9))

    assert got["difference"] == pytest.approx(estimate, abs=1e-12)
    for s, r in enumerate(got["per_seed"]):
        direct = np.mean([roc_auc_score(labels[:, k], a[s][:, k]) for k in range(c)])
        assert r["mean_auc_a"] == pytest.approx(direct, abs=1e-12)
        assert r["difference"] == pytest.approx(
            direct - np.mean([roc_auc_score(labels[:, k], b[s][:, k]) for k in range(c)]),
            abs=1e-12,
        )
    np.testing.assert_allclose(got["difference_ci95"], ci, atol=0.006)
    low, high = got["difference_ci95"]
    assert low < got["difference"] < high


def test_seeds_paired_difference_covers_a_known_true_difference():
    """Binormal scores: positives N(d, 1), negatives N(0, 1) have AUC Φ(d/√2); a has d = 1.5,
    b d = 1.0 in every seed (fresh noise per seed), so the true difference is 0.0954."""
    from scipy.stats import norm

    from s2mts2.eval.metrics import seeds_paired_auc_difference

    rng = np.random.default_rng(2)
    n, c, n_seeds = 3000, 2, 3
    labels = (rng.random((n, c)) < 0.3).astype(float)
    a = np.stack([1.5 * labels + rng.normal(size=(n, c)) for _ in range(n_seeds)])
    b = np.stack([1.0 * labels + rng.normal(size=(n, c)) for _ in range(n_seeds)])
    truth = norm.cdf(1.5 / np.sqrt(2)) - norm.cdf(1.0 / np.sqrt(2))
    assert truth == pytest.approx(0.0954, abs=1e-4)
    got = seeds_paired_auc_difference(a, b, labels, _table_of(labels), n_boot=300, seed=1)
    low, high = got["difference_ci95"]
    assert low < truth < high
    assert abs(got["difference"] - truth) < 0.015 and high - low < 0.05


def test_seeds_paired_difference_resamples_the_seeds():
    """Seed 0 of a equals b (difference exactly 0), seeds 1 and 2 are far better: a replicate
    drawing seed 0 three times (1 in 27, above 2.5 %) is 0, so the CI reaches 0; a CI of the
    test images alone would stay near the mean, about 2/3 of the gain."""
    from s2mts2.eval.metrics import seeds_paired_auc_difference

    rng = np.random.default_rng(3)
    n, c = 400, 2
    labels = (rng.random((n, c)) < 0.5).astype(float)
    b = np.stack([0.5 * labels + rng.normal(size=(n, c)) for _ in range(3)])
    a = b.copy()
    a[1:] += 3.0 * labels
    got = seeds_paired_auc_difference(a, b, labels, _table_of(labels), n_boot=1000, seed=0)
    assert got["per_seed"][0]["difference"] == 0.0
    assert got["per_seed"][0]["difference_ci95"] == [0.0, 0.0]
    assert got["difference"] > 0.15
    assert got["difference_ci95"][0] == pytest.approx(0.0, abs=1e-9)
    same = seeds_paired_auc_difference(b, b, labels, _table_of(labels), n_boot=50)
    assert same["difference"] == 0.0 and same["difference_ci95"] == [0.0, 0.0]
    with pytest.raises(DataError, match=r"\(S, N, C\)"):
        seeds_paired_auc_difference(a[0], b[0], labels, _table_of(labels))
