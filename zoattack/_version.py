"""The package version (its own module so that any layer can read it without importing the
root package, which pulls in every plug-in)."""

__version__ = "0.1.0"
