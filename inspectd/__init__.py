"""inspectd: inline inspection of thermal- and cold-spray coating micrographs."""

__version__ = "0.1.0"
