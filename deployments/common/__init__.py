"""Shared constants, audio helpers, errors and message types (no Ray imports)."""
