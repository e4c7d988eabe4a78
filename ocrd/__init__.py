"""ocrd keeps the model directory of an Aspose OCR AI host tidy and safe."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ocrd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
