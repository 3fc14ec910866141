"""Ray Jobs: ``paralab submit`` sends an experiment, with this checkout's paralab code, to a
running Ray cluster through its job API (see :mod:`.submit`)."""

from paralab.platform.jobs.submit import Submission, SubmitError, plan_submission, submit

__all__ = ["SubmitError", "Submission", "plan_submission", "submit"]
