"""Gate a softmax kernel in your own test suite with softaudit's Python API.

Copy this file into your tests (say tests/test_softmax_stability.py), replace the
kernels below with imports of yours, and run pytest. softaudit feeds each kernel
adversarial inputs (huge offsets, masked rows...), compares every output element with
the exact answer correctly rounded into the format, and ``assert_ok()`` fails the test
with the worst findings when the kernel is unstable. See docs/python-api.md.

The first run computes exact references (mpmath), about 5 s for the audit below;
they are cached (``$SOFTAUDIT_CACHE_DIR``, else ~/.cache/softaudit), so later runs
take about a second. Kernels run inside the pytest process: one that segfaults ends
the test run (``softaudit run`` isolates them in a worker instead).
"""

import numpy as np
import pytest

import softaudit

# A narrow audit keeps a unit test quick. These cases provoke the classic softmax
# failures: exp overflow (+1e4), exp underflow to 0/0 (-1e4), -inf from a causal mask,
# and fully masked rows. `softaudit cases` lists them all; cases=["offsets", "masking"]
# is a broader gate (about 20 s the first time, 2 s cached).
NARROW = {
    "dtypes": ["float32", "bfloat16"],
    "cases": ["offset-plus-1e4", "offset-minus-1e4", "mask-causal", "mask-fully-masked-rows"],
}


# --- The kernel under test: the stable textbook algorithm -------------------------

def softmax(x):
    """Row softmax of a 2-D array: subtract the row max before exp; 16-bit inputs in float32."""
    z = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)


def softmax_backward(y, dy):
    """Its gradient, given the forward output y and the upstream gradient dy: y * (dy - sum(y * dy))."""
    y32, dy32 = (a.astype(np.float32) if a.dtype.itemsize < 4 else a for a in (y, dy))
    return (y32 * (dy32 - (y32 * dy32).sum(axis=-1, keepdims=True))).astype(y.dtype)


def test_softmax_kernel_is_stable():
    # A mapping of the contract's names audits the forward pass and its explicit gradient.
    # (A torch kernel needs no backward function: autograd differentiates it.)
    report = softaudit.audit({"softmax": softmax, "softmax_backward": softmax_backward}, **NARROW)
    report.assert_ok()  # on failure: counts, then each finding with its case, exact and computed values


# --- A deliberately broken kernel: no max subtraction ------------------------------

def softmax_without_max_shift(x):
    """exp(x) / sum(exp(x)): right on small logits, NaN once exp overflows or underflows."""
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def test_unshifted_softmax_is_caught():
    # The function's name is not a contract name, so op= says what it implements.
    report = softaudit.audit(softmax_without_max_shift, op="softmax", **NARROW)
    assert not report.passed
    # In your own suite you would simply call report.assert_ok() and let it fail; here the
    # expected failure is checked: exp(x) overflows to inf at +1e4, and inf / inf is NaN.
    with pytest.raises(AssertionError, match="offset-plus-1e4"):
        report.assert_ok()
