"""Moved to :mod:`refresher.demo.workload`; this name stays until every import is updated."""

from .demo.workload import WorkerReport, WorkloadSpec, run_workers, summarize

__all__ = ["WorkerReport", "WorkloadSpec", "run_workers", "summarize"]
