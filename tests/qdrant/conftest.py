"""Fixtures of the Qdrant backend tests live in qdrant_testkit (a unique module name: a second
`conftest` module would shadow tests/conftest.py when test files import helpers)."""

from qdrant_testkit import *  # noqa: F401,F403
