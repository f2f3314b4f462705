"""AdamW with warmup + cosine decay, a weight-decay mask, global-norm clipping and per-part
learning-rate multipliers."""

from __future__ import annotations

import jax
import optax

from mmjax.conventions import parameter_name, under_prefixes

# Parameters named like this are embeddings or scalars that weight decay would only hurt.
NO_DECAY_NAMES = frozenset({"token_embedding", "position_embedding", "cls_token", "probe",
                            "logit_scale", "logit_bias"})


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int,
                           end_factor: float) -> optax.Schedule:
    """Linear warmup to `peak`, then cosine decay to `end_factor` x `peak` at `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak * end_factor,
    )


def run_schedule(config) -> optax.Schedule:
    """The schedule a run's top-level fields set (learning_rate, warmup_steps, total_steps,
    end_learning_rate_factor)."""
    return learning_rate_schedule(config.learning_rate, config.warmup_steps, config.total_steps,
                                  config.end_learning_rate_factor)


def weight_decay_mask(params):
    """True where weight decay applies: matrices, but not norms, biases or embeddings."""

    def decays(path, leaf) -> bool:
        return leaf.ndim >= 2 and not (set(parameter_name(path).split("/")) & NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def frozen_mask(params, prefixes):
    """'frozen' for parameters under one of `prefixes` (e.g. 'image_tower'), else 'trained'."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if under_prefixes(parameter_name(path), prefixes) else "trained",
        params)


def learning_rate_multipliers(params, lr_mults):
    """Each parameter's multiplier: that of the first (prefix, multiplier) it lies under, or 1."""

    def multiplier(path, _) -> float:
        name = parameter_name(path)
        return next((float(m) for p, m in lr_mults if under_prefixes(name, (p,))), 1.0)

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_learning_rate_multipliers(lr_mults) -> optax.GradientTransformation:
    """Scales each parameter's update by its multiplier: after AdamW, whose update is the learning
    rate times (direction + weight decay), that is the part's learning rate scaled."""

    def update(updates, state, params=None):
        del params
        factors = learning_rate_multipliers(updates, lr_mults)
        return jax.tree_util.tree_map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(settings, schedule: optax.Schedule,
                    frozen_params: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """AdamW with `settings` (config.optimizer) following `schedule`; parameters under
    `frozen_params` prefixes get no update at all."""
    adamw = optax.adamw(
        schedule, b1=settings.b1, b2=settings.b2, eps=settings.eps,
        weight_decay=settings.weight_decay, mask=weight_decay_mask,
    )
    if settings.grad_clip_norm:
        adamw = optax.chain(optax.clip_by_global_norm(settings.grad_clip_norm), adamw)
    # Only when set, so that runs without multipliers keep their optimizer state's structure.
    if settings.get("lr_mults"):
        adamw = optax.chain(adamw, scale_by_learning_rate_multipliers(tuple(settings.lr_mults)))
    if not frozen_params:
        return adamw
    # Frozen parameters (LiT's locked image tower) get no update at all, not even weight decay.
    return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()},
                                 lambda params: frozen_mask(params, tuple(frozen_params)))
