"""docs/cli.md runs as written: every ```bash block, in order, in a fresh folder."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from compatindex_cli.main import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def run_block(block: str, cwd: Path) -> list[str]:
    """Run one block: a `python - <<'EOF'` heredoc, or `compatindex ...` lines (in-process)."""
    if block.startswith("python - <<'EOF'"):
        code = block.split("\n", 1)[1].rsplit("EOF", 1)[0]
        proc = subprocess.run([sys.executable, "-"], input=code, cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return []
    outs = []
    runner = CliRunner()
    for line in block.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "compatindex", line
        res = runner.invoke(app, argv[1:])
        assert res.exit_code == 0, f"{line}\n{res.stderr}"
        outs.append(res.stdout)
    return outs


def test_docs_examples_run(tmp_path, monkeypatch):
    quick, data, *rest = bash_blocks()
    assert quick.strip().splitlines() == [
        "compatindex init my.index --dim 128",
        "compatindex add my.index vectors.npy",
        "compatindex search my.index queries.npy -k 10 --json",
    ]
    for name in ("walkthrough", "quick"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "walkthrough")
    run_block(data, Path.cwd())
    outputs = [o for block in rest for o in run_block(block, Path.cwd())]
    assert "deleted 2 items; the index holds 1011 items" in "".join(outputs)
    assert "ok (1011 items" in outputs[-1]
    monkeypatch.chdir(tmp_path / "quick")
    run_block(data, Path.cwd())
    hits = run_block(quick, Path.cwd())[-1].splitlines()
    assert len(hits) == 5 and len(json.loads(hits[0])["ids"]) == 10
