"""The root of softaudit's own exceptions, and the one type every bad-input error derives from.

``BadInput`` is what the command line turns into one line and exit code 2 (a traceback only under
--debug); it is a ValueError, so the Python API's callers can catch either. Standard library only:
``import softaudit`` exports ``SoftauditError`` and stays light.
"""

from __future__ import annotations


class SoftauditError(Exception):
    """Anything softaudit raises on purpose."""


class BadInput(SoftauditError, ValueError):
    """The input is wrong (a target, a case file, an option, a results file): the message is one
    line that names the culprit."""


__all__ = ["SoftauditError", "BadInput"]
