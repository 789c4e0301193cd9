"""geoimplicit: neural implicit surfaces and multiplane images for aerial and satellite mapping."""

__version__ = "0.1.0"
