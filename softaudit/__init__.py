"""softaudit: a numerical-stability auditor for softmax-family code.

It runs candidate implementations of softmax, log_softmax, logsumexp and
cross-entropy (forward and backward) over adversarial inputs, compares every output element with an exact (mpmath)
reference correctly rounded into the target format, and judges each result
against a stability envelope (see docs/ and the README).

``import softaudit`` is light (no numpy): the decorator comes from softaudit.candidates.decorator,
the error root from softaudit.errors, and ``audit`` and ``AuditReport`` (softaudit.api, with the
audit machinery) and ``reproduce`` (softaudit.reproduction) are imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from softaudit.candidates.decorator import candidate  # public decorator
from softaudit.errors import SoftauditError

__version__ = "0.1.0"

__all__ = ["__version__", "candidate", "audit", "AuditReport", "reproduce", "SoftauditError"]

_LAZY = {"audit": "softaudit.api", "AuditReport": "softaudit.api", "reproduce": "softaudit.reproduction"}

if TYPE_CHECKING:
    from softaudit.api import AuditReport, audit
    from softaudit.reproduction import reproduce


def __getattr__(name: str) -> Any:
    """The public names that need the audit machinery, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'softaudit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
