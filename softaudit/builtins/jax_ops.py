"""jax.nn.softmax, jax.nn.log_softmax, jax.nn.logsumexp (axis=-1) and optax's
softmax_cross_entropy / softmax_cross_entropy_with_integer_labels, as shipped.

What differs: nothing of ours in the arithmetic. The input is a JAX array of its own dtype on the
CPU (no upcast; float64 cases run in JAX's 64-bit mode, docs/candidates.md#jax). The backward
passes are jax.vjp of these functions, as training computes them. cross_entropy maps the
contract's keywords onto optax: class-index targets go to
softmax_cross_entropy_with_integer_labels, probability targets to softmax_cross_entropy;
label_smoothing through optax.smooth_labels (torch's (1 - a)·target + a/n); reduction by
jnp.mean / jnp.sum. optax has no class weights and no ignore_index, so cases that need them are
skipped. Without optax only the three ops are audited (the description says so).
"""

import jax
import jax.numpy as jnp

try:
    import optax
except ImportError:  # the three ops need jax only
    optax = None


def softmax(x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x, axis=-1)


def log_softmax(x: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(x, axis=-1)


def logsumexp(x: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(x, axis=-1)


def _cross_entropy(logits: jax.Array, target: jax.Array, reduction: str = "mean",
                   label_smoothing: float = 0.0) -> jax.Array:
    if target.ndim == logits.ndim:  # probability targets
        labels = target
    elif label_smoothing:
        labels = jax.nn.one_hot(target, logits.shape[-1], dtype=logits.dtype)
    else:
        labels = None
    if labels is None:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    else:
        if label_smoothing:
            labels = optax.smooth_labels(labels, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels)
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


if optax is not None:
    cross_entropy = _cross_entropy
else:
    __doc__ = ("jax.nn.softmax, log_softmax and logsumexp as shipped; cross_entropy is not audited: "
               "optax is not installed (pip install 'softaudit[jax]').")
