"""The `compatindex` command line (installed as the package ``compatindex_cli``)."""
