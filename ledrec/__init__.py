"""ledrec: a streaming real-time recommender built on LED (Lightweight Encoder-Decoder)."""

from importlib.metadata import version as _version

__version__ = _version("ledrec")
