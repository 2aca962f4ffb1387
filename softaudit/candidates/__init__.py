"""Candidates: the implementations under audit, from the ``@candidate`` mark to a call's result.

A *candidate* is one implementation of some of the ops ``softmax``,
``log_softmax``, ``logsumexp`` and ``cross_entropy`` (docs/candidates.md#the-contract), and
optionally of their explicit backward functions (``softmax_backward`` ...).
It comes from a Python file (``impl.py``) or a built-in (``builtin:NAME``);
both are loaded the same way, from a file executed as a fresh module.

The modules, in the order data flows through them:

- ``decorator``: the ``@candidate`` mark (standard library only: ``import softaudit`` imports it);
- ``loading``: a ``.py`` file or ``builtin:NAME`` executed as a fresh module (Triton's CPU
  interpreter patched where there is no GPU);
- ``collection``: a module's (or a mapping's) functions grouped into candidates;
- ``detection`` and ``probes``: how each function is called (backend, device, keywords, rows),
  guessed statically and confirmed by probe calls;
- ``calling``, ``arguments`` and ``conversion``: one call, its fresh inputs, and its output
  normalised into the audited format;
- ``model`` and ``errors``: the candidate and its functions, and what goes wrong, in one line.

This package imports none of them (most need numpy): import the module that holds a name.
"""
