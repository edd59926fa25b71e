"""Fixtures of the trainer tests live in trainer_testkit (a unique module name, so that no
`conftest` module shadows another when test files import helpers)."""

from trainer_testkit import *  # noqa: F401,F403
