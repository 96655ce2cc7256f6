"""ledrec: a streaming real-time recommender built on LED (Lightweight Encoder-Decoder)."""

__version__ = "0.1.0"
