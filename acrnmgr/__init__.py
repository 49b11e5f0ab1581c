"""acrnmgr: configuration-driven ACRN virtual machines."""

__version__ = "0.1.0"
