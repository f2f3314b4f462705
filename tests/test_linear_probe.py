"""The linear probe's L-BFGS fit against scikit-learn's LogisticRegression on the same features."""

import numpy as np
import pytest

from mmjax.evaluation import linear_probe, metrics


def overlapping_classes(num_classes=6, dim=24, per_class=90, seed=0):
    """Gaussian classes close enough that no classifier is perfect (regularisation matters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 0.9
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dim))
    order = rng.permutation(len(labels))
    return features[order].astype(np.float32), labels[order]


@pytest.fixture(scope="module")
def split():
    x, y = overlapping_classes(per_class=150, seed=1)
    return x[:540], y[:540], x[540:], y[540:]


@pytest.mark.parametrize("c", [1e-3, 0.1, 10.0])
def test_fit_matches_scikit_learn_logistic_regression(split, c):
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = split
    params = linear_probe.fit(train_x, train_y, np.float32(c), num_classes=6)
    ours = linear_probe.predict_scores(params, test_x).argmax(1)
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(train_x, train_y)
    theirs = reference.predict(test_x)
    assert abs((ours == test_y).mean() - (theirs == test_y).mean()) <= 0.01
    # The same minimum, not only the same accuracy: predictions agree nearly everywhere.
    assert (ours == theirs).mean() >= 0.98
    np.testing.assert_allclose(np.asarray(params[0]).T, reference.coef_, atol=1e-2 * max(
        1.0, np.abs(reference.coef_).max()))


def test_sweep_picks_a_c_that_scikit_learn_agrees_with(split):
    """The whole probe (sweep, refit, test) is within 1 % of scikit-learn at the chosen C, and
    the chosen C is not worse on held-out data than the extremes of the sweep."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = split
    result = metrics.linear_probe_metrics(train_x, train_y, test_x, test_y)
    c = result["linear_probe_c"]
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(train_x, train_y)
    assert abs(result["linear_probe_top1"] - reference.score(test_x, test_y)) <= 0.01
    weakest = LogisticRegression(C=1e-6, max_iter=5000).fit(train_x, train_y)
    assert result["linear_probe_top1"] > weakest.score(test_x, test_y) + 0.1
    assert set(result) == {"linear_probe_top1", "linear_probe_top5",
                            "linear_probe_mean_per_class", "linear_probe_c"}


def test_linear_probe_separates_what_is_separable_and_picks_c_on_held_out_data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 3
    train_labels, test_labels = rng.integers(0, 3, 300), rng.integers(0, 3, 100)
    train = centers[train_labels] + rng.normal(size=(300, 8))
    test = centers[test_labels] + rng.normal(size=(100, 8))
    result = metrics.linear_probe_metrics(train, train_labels, test, test_labels)
    # The Bayes rule on these clusters; the probe must be as good within a few errors.
    bayes = np.argmin(((test[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    assert result["linear_probe_top1"] >= (bayes == test_labels).mean() - 0.03
    assert 1e-6 <= result["linear_probe_c"] <= 1e6
    shuffled = metrics.linear_probe_metrics(train, rng.permutation(train_labels), test,
                                               test_labels)
    assert shuffled["linear_probe_top1"] < 0.6  # labels unrelated to features: near chance


def test_classes_without_training_examples_are_never_predicted_and_the_rest_match_sklearn(split):
    """ImageNet's probe on a few hundred images sees few of the 1,000 classes: the fit covers the
    classes present (scikit-learn's `classes_`), the others score -inf, and the present ones'
    scores are what a fit on those classes alone gives."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, _ = split
    sparse = np.array([3, 40, 41, 97, 250, 999])  # six labels out of 1,000
    scores, c = linear_probe.fit_and_score(train_x, sparse[train_y], test_x, num_classes=1000)
    assert scores.shape == (len(test_x), 1000)
    absent = np.setdiff1d(np.arange(1000), sparse)
    assert np.all(scores[:, absent] == -np.inf) and np.all(np.isfinite(scores[:, sparse]))
    reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(train_x, sparse[train_y])
    np.testing.assert_array_equal(reference.classes_, sparse)
    assert (sparse[scores[:, sparse].argmax(1)] == reference.predict(test_x)).mean() >= 0.98
    np.testing.assert_allclose(
        scores[:, sparse] - scores[:, sparse].mean(1, keepdims=True),
        reference.decision_function(test_x) - reference.decision_function(test_x).mean(
            1, keepdims=True), atol=0.05 * np.abs(reference.decision_function(test_x)).max())
