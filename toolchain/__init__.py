"""sensibert toolchain: sensitivity-driven trimming of BERT encoders for edge devices.

Importing the package is cheap; heavy modules (torch, transformers) load on first use.
"""

__version__ = "0.1.0"
