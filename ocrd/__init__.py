"""ocrd keeps the model directory of an Aspose OCR AI host tidy and safe."""

__version__ = "0.1.0"
