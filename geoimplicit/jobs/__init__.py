"""The job layer: tile jobs, their product kinds, the run index, the executors and the loop (docs/architecture.md)."""
