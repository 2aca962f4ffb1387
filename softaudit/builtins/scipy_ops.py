"""scipy.special.softmax, log_softmax and logsumexp (axis=-1), as shipped.

What differs: nothing of ours. The input array is passed in its own dtype (float16 and
bfloat16 included: scipy computes in whatever numpy's ufuncs give for it), so the audit sees
how scipy itself handles each format. scipy has no cross-entropy and no backward passes, so
the backward records are SKIPs with the reason numpy candidates without backward functions
get. Needs the ``scipy`` extra (``pip install 'softaudit[scipy]'``); without it the target is
skipped with that reason.
"""

import numpy as np
import scipy.special


def softmax(x: np.ndarray) -> np.ndarray:
    return scipy.special.softmax(x, axis=-1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    return scipy.special.log_softmax(x, axis=-1)


def logsumexp(x: np.ndarray) -> np.ndarray:
    return scipy.special.logsumexp(x, axis=-1)
