"""The job layer: every tiled product runs through it (``docs/architecture.md``).

- :mod:`geoimplicit.jobs.index`: the run index ``tiles.gpkg`` (statuses, metadata, the resume key).
- :mod:`geoimplicit.jobs.loop`: the tile-job protocol and the one loop (``run_jobs``, ``execute``).
- :mod:`geoimplicit.jobs.products`: product kinds by name; :mod:`geoimplicit.jobs.raster`: the raster kind.
- :mod:`geoimplicit.jobs.executors`: where jobs run (local, Dask; one worker per GPU).
- :mod:`geoimplicit.jobs.registry`: plugins by name, also from entry-point groups.

Nothing is imported here, so that ``import geoimplicit.jobs.registry`` stays light.
"""
