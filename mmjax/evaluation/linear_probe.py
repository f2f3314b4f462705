"""The linear probe as the CLIP paper runs it: multinomial logistic regression on frozen image
features, fitted with L-BFGS, its inverse regularisation strength C chosen by a sweep on a
held-out part of the training features.

The objective is scikit-learn's `LogisticRegression(C=C)` (lbfgs, multinomial): the summed
cross-entropy plus ||W||^2 / (2 C), the bias unpenalised; it is divided by the number of
examples here, which changes its scale, not its minimum. tests/test_linear_probe.py checks the
fit against scikit-learn on the same features.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Coarse sweep of C (log10), then halving steps around the best value, as in the CLIP paper's
# parametric binary search.
COARSE_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
REFINE_STEPS = 4


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iterations"))
def fit(features, labels, inverse_l2, weights=None, *, num_classes: int,
        max_iterations: int = 1000, tolerance: float = 1e-5):
    """(W [d, K], b [K]) minimising mean cross-entropy + ||W||^2 / (2 C n); C = inverse_l2.

    `weights` (0 or 1 per example) leaves examples out with the shapes unchanged, so the sweep
    and the final fit share one compiled program."""
    d = features.shape[1]
    weights = jnp.ones(features.shape[:1], features.dtype) if weights is None else weights
    n = weights.sum()
    penalty = 1.0 / (2.0 * inverse_l2 * n)

    def loss(params):
        logits = features @ params[0] + params[1]
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (cross_entropy * weights).sum() / n + penalty * jnp.sum(params[0] ** 2)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    params = (jnp.zeros((d, num_classes), features.dtype), jnp.zeros((num_classes,),
                                                                      features.dtype))

    def step(carry):
        params, state, _, iteration = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=loss)
        return optax.apply_updates(params, updates), state, optax.tree.norm(grad), iteration + 1

    def running(carry):
        return (carry[3] < max_iterations) & (carry[2] > tolerance)

    carry = (params, optimizer.init(params), jnp.inf, 0)
    params, _, _, _ = jax.lax.while_loop(running, step, carry)
    return params


def predict_scores(params, features) -> np.ndarray:
    return np.asarray(jnp.asarray(features) @ params[0] + params[1])


def sweep_c(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
            held_out_share: float = 0.2, seed: int = 0) -> float:
    """The C with the best accuracy on a held-out part of the training features: a coarse
    log-spaced sweep, then REFINE_STEPS halvings of the step around the best (ties: the
    stronger regularisation)."""
    order = np.random.default_rng(seed).permutation(len(train_labels))
    held = np.zeros(len(order), bool)
    held[order[int(round(len(order) * (1 - held_out_share))):]] = True
    features, labels = jnp.asarray(train_features), jnp.asarray(train_labels)
    weights = jnp.asarray(~held, features.dtype)
    tried: dict[float, float] = {}

    def accuracy(log10_c: float) -> float:
        if log10_c not in tried:
            params = fit(features, labels, jnp.float32(10.0 ** log10_c), weights,
                         num_classes=num_classes)
            predicted = predict_scores(params, train_features[held]).argmax(1)
            tried[log10_c] = float((predicted == train_labels[held]).mean())
        return tried[log10_c]

    best = max(COARSE_LOG10_C, key=lambda c: (accuracy(c), -c))
    step = (COARSE_LOG10_C[1] - COARSE_LOG10_C[0]) / 2
    low, high = COARSE_LOG10_C[0], COARSE_LOG10_C[-1]
    for _ in range(REFINE_STEPS):
        candidates = [c for c in (best - step, best, best + step) if low <= c <= high]
        best = max(candidates, key=lambda c: (accuracy(c), -c))
        step /= 2
    return float(10.0 ** best)


def fit_and_score(train_features: np.ndarray, train_labels: np.ndarray,
                  test_features: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """Sweeps C, refits on all training features; the test features' class scores and C.

    Only the classes the training labels hold are fitted, as scikit-learn does; the others
    score -inf. Fitted, a class without examples would have its unpenalised bias driven to -inf
    and L-BFGS would never converge (every fit ran its 1,000 iterations)."""
    train_features = np.asarray(train_features, np.float32)
    present, train_index = np.unique(np.asarray(train_labels), return_inverse=True)
    c = sweep_c(train_features, train_index, len(present))
    params = fit(jnp.asarray(train_features), jnp.asarray(train_index), jnp.float32(c),
                 jnp.ones(len(train_index), jnp.float32), num_classes=len(present))
    scores = np.full((len(test_features), num_classes), -np.inf, np.float32)
    scores[:, present] = predict_scores(params, np.asarray(test_features, np.float32))
    return scores, c
