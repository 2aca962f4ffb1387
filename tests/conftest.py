"""Shared test configuration.

* Every test (in-process code and the CLI subprocesses alike) uses one reference
  cache in a pytest temporary directory, shared by the whole session, so
  references are computed once and the suite never writes to ~/.cache; and a
  corpus directory that does not exist (SOFTAUDIT_CORPUS_DIR), so no found case
  of the developer's changes what `softaudit run` audits.
* The CLI's diagnosis is off (SOFTAUDIT_NO_DIAGNOSE=1) except in tests/test_diagnosis_outputs.py,
  which tests it.
* Tests marked ``slow`` (the whole case library) run only with ``--runslow``.
* Tests marked ``gpu`` run only where torch sees a CUDA device; elsewhere they are
  skipped with that reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (the whole shipped case library)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any("gpu" in item.keywords for item in items) and not _cuda_available():
        skip_gpu = pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False here)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(scope="session", autouse=True)
def softaudit_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's reference cache: $SOFTAUDIT_CACHE_DIR for this process and
    every subprocess it starts (os.environ is inherited), restored afterwards."""
    path = tmp_path_factory.mktemp("softaudit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTAUDIT_CACHE_DIR", str(path))
        # A corpus no test writes to unless it says so: a developer's own .softaudit/corpus in the
        # checkout must not change what `softaudit run` audits in the tests.
        mp.setenv("SOFTAUDIT_CORPUS_DIR", str(path / "no-corpus"))
        # The diagnosis (its experiments start a worker) is what tests/test_diagnosis*.py test; the
        # other tests' runs skip it, as `SOFTAUDIT_NO_DIAGNOSE=1 softaudit run` does.
        mp.setenv("SOFTAUDIT_NO_DIAGNOSE", "1")
        yield path
