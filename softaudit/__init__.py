"""softaudit: a numerical-stability auditor for softmax-family code.

It runs candidate implementations of softmax, log_softmax, logsumexp and
cross-entropy (forward and backward) over adversarial inputs, compares every output element with an exact (mpmath)
reference correctly rounded into the target format, and judges each result
against a stability envelope (see docs/ and the README).
"""

__version__ = "0.1.0"

from softaudit.candidates import candidate  # noqa: E402  (public decorator)
from softaudit.api import AuditReport, audit  # noqa: E402  (the pytest API; loads the audit machinery when called)

__all__ = ["__version__", "candidate", "audit", "AuditReport"]
