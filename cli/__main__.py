"""``python -m compatindex_cli``: the same as the ``compatindex`` executable."""

from .main import main

main()
