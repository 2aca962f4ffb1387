"""The options model: layering by dataclasses.replace, and one rule per value named by each front end."""

from __future__ import annotations

import pickle

import pytest

from softaudit.candidates.errors import CandidateImportError, NoOpsError
from softaudit.config import ConfigError, load_config
from softaudit.errors import BadInput, SoftauditError
from softaudit.judging.verdicts import Gate
from softaudit.options import (
    KEYWORDS,
    AuditOptions,
    CacheOptions,
    Naming,
    OptionError,
    WorkerOptions,
    checked_audit_options,
    overridden,
)
from softaudit.runner.worker_replies import LoadRefused
from softaudit.search.engine import SearchError, SearchOptions


def test_a_layer_sets_only_what_it_gives():
    base = AuditOptions(seed=3, ops=["softmax"], gate=Gate(ratio_limit=8.0))
    assert overridden(base, seed=None, ops=[], shapes=()) is base
    layered = overridden(base, seed=5, gate=overridden(base.gate, max_ulp=2.0, ratio_limit=None))
    assert (layered.seed, list(layered.ops), layered.gate.ratio_limit, layered.gate.max_ulp) == (5, ["softmax"], 8.0, 2.0)
    assert base.seed == 3  # replace, never mutate


def test_config_is_the_layer_between_defaults_and_flags(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.softaudit]\nseed = 4\ndevice = "cpu"\nstrict = true\n[tool.softaudit.limits]\nratio = 16\n',
                    encoding="utf-8")
    configured = load_config(path).over_audit(AuditOptions())
    assert (configured.seed, configured.worker.device, configured.gate.strict, configured.gate.ratio_limit) == \
        (4, "cpu", True, 16.0)
    flags = overridden(configured, seed=7, gate=overridden(configured.gate, strict=False))
    assert (flags.seed, flags.gate.strict, flags.gate.ratio_limit) == (7, False, 16.0)


@pytest.mark.parametrize("options, names, message", [
    (AuditOptions(seed=-1), KEYWORDS, "seed must be an integer 0 or more, got -1"),
    (AuditOptions(seed=-1), Naming(seed="--seed"), "--seed must be an integer 0 or more, got -1"),
    (AuditOptions(gate=Gate(ratio_limit=1.0)), Naming(ratio_limit="--limit"),
     "--limit must be a finite number greater than 1 (the envelope itself), got 1.0"),
    (AuditOptions(gate=Gate(undefined_policy="maybe")), KEYWORDS, "unknown undefined_policy 'maybe'"),
    (AuditOptions(worker=WorkerOptions(device="tpu")), Naming(device="--device:"), "--device: unknown device 'tpu'"),
    (AuditOptions(worker=WorkerOptions(timeout=0.0)), KEYWORDS, "timeout must be between 0 and"),
    (AuditOptions(jobs=0), KEYWORDS, "jobs must be between 1 and 1024, got 0"),
    (AuditOptions(ops=["softmin"]), KEYWORDS, "unknown op 'softmin'"),
])
def test_one_rule_per_value_named_as_the_front_end_names_it(options, names, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked_audit_options(options, names)


def test_checked_options_are_normalised():
    options = checked_audit_options(AuditOptions(gate=Gate(ratio_limit=5), relative_factor=3))
    assert options.gate.ratio_limit == 5.0 and isinstance(options.gate.ratio_limit, float)
    assert isinstance(options.relative_factor, float)


def test_the_same_rule_in_the_config_names_file_and_key(tmp_path):
    path = tmp_path / "gate.toml"
    path.write_text("jobs = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="gate.toml: jobs: must be between 1 and 1024, got 0"):
        load_config(path)


def test_search_options_share_the_parts():
    options = SearchOptions(op="softmax", worker=WorkerOptions(isolated=False), cache=CacheOptions(enabled=False))
    assert not options.worker.isolated and not options.cache.enabled and options.gate == Gate()


def test_every_bad_input_error_has_one_root():
    for error in (OptionError, ConfigError, SearchError, NoOpsError, CandidateImportError):
        assert issubclass(error, BadInput) and issubclass(error, ValueError) and issubclass(error, SoftauditError)


def test_a_refused_load_travels_as_its_exception():
    reply = pickle.loads(pickle.dumps(LoadRefused(NoOpsError("helper.py: defines none of the ops"))))
    assert type(reply.error) is NoOpsError and str(reply.error) == "helper.py: defines none of the ops"
