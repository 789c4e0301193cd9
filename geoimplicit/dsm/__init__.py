"""DSM production: the rasterization baseline (:mod:`geoimplicit.dsm.rasterize`) and the occupancy method."""
