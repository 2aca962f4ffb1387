"""An independent test oracle for softaudit's correctly-rounded references.

Nothing here imports softaudit's numerics (no softaudit.reference*, no
softaudit.formats rounding, no mpmath): exact values come from ball arithmetic
(Arb, through python-flint) and exact rationals (fractions.Fraction), and the
rounding into each format is this package's own round-to-nearest-even.

Modules:

* :mod:`tests.oracle.rounding`: formats and round-to-nearest-even of exact values.
* :mod:`tests.oracle.exact`: exact softmax, log_softmax, logsumexp, their VJPs,
  cross-entropy and its gradient, certified by interval arithmetic.
* :mod:`tests.oracle.compare`: disagreements between softaudit's references and the oracle.
* :mod:`tests.oracle.generators`: seeded adversarial rows (near rounding midpoints).
* :mod:`tests.oracle.subject`: glue that builds softaudit's inputs for a case (its own
  builders: building inputs is not numerics) and asks softaudit for its references;
  the only module that imports softaudit.
"""
