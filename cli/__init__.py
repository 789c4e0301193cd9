"""The geoimplicit command line: a thin Click layer over the library, one module per command."""
