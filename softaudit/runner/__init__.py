"""The runner: the audit loop (loop.py) that calls candidates in isolated workers (isolation.py,
worker.py), prefetches references (prefetch.py), plans and loads targets (planning.py), records
the environment (environment.py) and times candidates (bench.py)."""
