"""Built-in candidates, addressed as ``builtin:NAME``.

Each built-in is a plain candidate module in this package, written to the
same contract as a user's ``impl.py`` and loaded by the same code path, so it
doubles as an example. One module per variant, each short, with a comment on
what differs from the others and why:

- ``naive``: no max shift; overflows (inf/NaN) once exp(x) leaves the range.
- ``shifted``: the textbook max-shifted algorithm in working precision.
- ``shifted-f64``: the same in float64 (long double for float64 input), rounded once.
- ``torch``: torch.softmax / log_softmax / logsumexp as the framework ships them.
- ``triton-softmax``: a Triton kernel per row, the whole row in registers.
- ``triton-online``: a Triton online softmax over tiles (rows of any length).
- ``triton-ce``: a fused Triton cross-entropy, forward and backward, over vocabulary tiles.
- ``scipy``: scipy.special.softmax / log_softmax / logsumexp as scipy ships them (extra ``scipy``).
- ``liger``: Liger-Kernel's Triton softmax and cross-entropy, a Triton library (extra ``liger``).
- ``jax``: jax.nn.softmax / log_softmax / logsumexp and optax's cross-entropies as shipped.
- ``torch-linear-ce``: linear_cross_entropy unfused: torch's eager matmul, then F.cross_entropy.
- ``torch-chunked-linear-ce``: the textbook fused linear cross-entropy, chunked, float32 accumulation.
- ``liger-linear-ce``: Liger-Kernel's fused linear cross-entropy (extra ``liger``).

The Triton built-ins need the ``triton`` extra, ``jax`` the ``jax`` extra; ``triton_math`` holds
what the Triton ones share.

This package does not import its modules (``torch`` needs torch, ``jax`` jax): the loader
executes them from their files.
"""

from __future__ import annotations

from pathlib import Path

BUILTINS: dict[str, str] = {
    "naive": "naive",
    "shifted": "shifted",
    "shifted-f64": "shifted_f64",
    "torch": "torch_ops",
    "triton-softmax": "triton_softmax",
    "triton-online": "triton_online",
    "triton-ce": "triton_ce",
    "scipy": "scipy_ops",
    "liger": "liger",
    "jax": "jax_ops",
    "torch-linear-ce": "torch_linear_ce",
    "torch-chunked-linear-ce": "torch_chunked_linear_ce",
    "liger-linear-ce": "liger_linear_ce",
}
"""Name as typed after ``builtin:`` -> module file stem in this package."""


def builtin_path(name: str) -> Path:
    """The source file of built-in ``name`` (a key of BUILTINS)."""
    return Path(__file__).with_name(f"{BUILTINS[name]}.py")
