"""The ``chime`` command line."""
