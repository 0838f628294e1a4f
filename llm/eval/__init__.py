"""Measuring models: bits per byte and greedy samples (CORE and the eval CLI build on these)."""
