"""The package version, in one place (setup.cfg and run records read it)."""

__version__ = "0.3.0"
