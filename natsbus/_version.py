"""The package version, in a leaf module: nothing needs the package face to read it."""

#: The version of natsbus.
__version__ = "0.1.0"
