"""Stream jobs: consume verified batches, clean them, land them exactly once."""

from tidm.stream_processing.errors import JobError, JobSpecError
from tidm.stream_processing.runner import JobRunner, JobSettings, JobStats
from tidm.stream_processing.steps import Flag, StepResult, drop_bad_samples

__all__ = [
    "Flag",
    "JobError",
    "JobRunner",
    "JobSettings",
    "JobSpecError",
    "JobStats",
    "StepResult",
    "drop_bad_samples",
]
