"""Diagnosis: name the bug behind a candidate's FAILs and WARNs, show the evidence, give the fix.

``diagnose(records, candidate)`` (diagnose.py) ranks the causes of each failing candidate x op x
direction from the records (evidence.py) and a few small experiments run through the public
``softaudit.audit`` API (experiments.py); classes.py is the catalogue of causes, documented in
docs/diagnosis.md. stage.py runs it after an audit: ``softaudit run`` with its experiments in the
candidates' worker (WorkerRunner), ``softaudit.audit(...).diagnoses`` in-process (ApiRunner).
"""

from softaudit.diagnosis.classes import CLASSES, NO_KNOWN_CAUSE, BugClass, get_class
from softaudit.diagnosis.diagnose import diagnose
from softaudit.diagnosis.experiments import AuditRunner, Experiment, ExperimentResult, Subject
from softaudit.results.diagnoses import Cause, Diagnosis, ExperimentRun

__all__ = ["CLASSES", "NO_KNOWN_CAUSE", "AuditRunner", "BugClass", "Cause", "Diagnosis", "Experiment",
           "ExperimentResult", "ExperimentRun", "Subject", "diagnose", "get_class"]
