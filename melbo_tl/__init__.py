"""melbo_tl: optimized steering vectors as TransformerLens 4 hook points."""

__version__ = "0.1.0"
