"""Bundled trainer (placeholder during development)."""
