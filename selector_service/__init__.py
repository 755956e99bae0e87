"""PCM chunk-selection service: the core algorithm, phase-state stores and the application layer."""

__version__ = "0.1.0"
