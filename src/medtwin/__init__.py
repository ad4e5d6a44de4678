"""medtwin: an open-source platform for healthcare digital twins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medtwin")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
