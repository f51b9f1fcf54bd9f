"""The arena: running suites (``run``), the results store (``store``), measuring
(``measure``: one timer for speed, compression and linearization), reporting (``report``)
and the deployment workflows that measure and store (``deploy``: compress, linearize)."""
