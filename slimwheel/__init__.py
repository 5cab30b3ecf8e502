"""slimwheel: remove the CUDA device code a GPU will never load from built binaries."""

__version__ = "0.1.0"
