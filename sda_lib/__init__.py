"""sda-workbench: reproduce and extend SDA (structural and disentangled adaptation of LVLMs for
multimodal recommendation)."""

__version__ = "0.1.0"
