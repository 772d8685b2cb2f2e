"""Synthetic site generators, kept apart from the loaders that read real data."""
