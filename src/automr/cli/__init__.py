"""The ``automr`` command line: thin wrappers over library functions."""
