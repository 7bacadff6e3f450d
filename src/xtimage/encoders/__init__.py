"""Region encoders (local experts) and context encoders (long-sequence mixers)."""
