"""Moved to :mod:`geoimplicit.jobs.executors` (the job layer); these names stay importable from here."""

from geoimplicit.jobs.executors import DaskExecutor, LocalExecutor, gpu_assignment, make_executor

__all__ = ["LocalExecutor", "DaskExecutor", "make_executor", "gpu_assignment"]
