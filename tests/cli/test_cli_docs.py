"""docs/cli.md documents every command and option, and its examples do what the page says.

The page's blocks are run by tests/test_docs.py (once per session, shared through
``run_page``); these tests check what those runs printed and what the page covers.
"""

from __future__ import annotations

import json
import re

import typer.main

from compatindex_cli.main import app
from test_docs import ROOT, blocks_under, run_page

DOC = ROOT / "docs" / "cli.md"


def _lines(block) -> list[str]:
    return [line for line in block.code.strip().splitlines() if line.strip()]


def _outputs(prefix: str) -> list[str]:
    """Stdout of every cli.md block whose first line starts with ``prefix``."""
    runs = [r for r in run_page("docs/cli.md") if r.block.code.startswith(prefix)]
    assert runs, f"no block of docs/cli.md starts with {prefix!r}"
    for r in runs:
        assert r.returncode == 0, f"{r.block.where}\n{r.stderr[-2000:]}"
    return [r.stdout for r in runs]


def test_quick_start_is_the_readmes():
    (readme,) = blocks_under(ROOT / "README.md", "## Quick start")
    (cli,) = blocks_under(DOC, "## Quick start")
    assert _lines(cli) == _lines(readme)
    assert _lines(cli)[0].startswith("compatindex init ")


def test_quick_start_prints_one_json_line_per_query():
    (out,) = _outputs("compatindex init my.index --dim 64")
    hits = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(hits) == 5 and all(len(h["ids"]) == 10 for h in hits)


def test_every_command_and_option_is_documented():
    text = DOC.read_text()
    group = typer.main.get_command(app)
    assert {"upgrade", "export"} <= set(group.commands)
    for name, cmd in group.commands.items():
        assert f"## `compatindex {name} " in text or f"## `compatindex {name}`" in text, name
        for param in cmd.params:
            opts = [o for o in param.opts + param.secondary_opts if o.startswith("-")]
            if not opts or param.name == "help":
                continue
            assert any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text) for o in opts), (name, opts)


def test_walkthrough_outputs_match_the_page():
    (deleted,) = _outputs("compatindex delete ")
    assert "deleted 2 items; the index holds 1011 items" in deleted
    (verified,) = _outputs("compatindex verify my.index")
    assert "ok (1011 items" in verified
    assert "ok (1011 items" in DOC.read_text()


def test_upgrade_example_registers_and_finds_the_items():
    (out,) = _outputs("compatindex upgrade ")
    assert "registered version 'v3' (dim 144, parent 'v1'" in out
    hits = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [h["ids"][0] for h in hits] == [0, 1, 2, 3, 4]  # each new query finds its own item
    assert all(h["versions"][0] == "v1" for h in hits)


def test_export_example_copies_everything_offline():
    (out,) = _outputs("compatindex export ")
    assert "exported 1011 items to qdrant+local://my.qdrant" in out and "counts verified" in out
    assert "vectors v1: 1011, v2: 100, v3: 0" in out
    assert "INDEX 'qdrant+local://my.qdrant': ok (1011 items" in out

