"""`compatindex compact` and `compatindex backup` (cli/compact.py, cli/backup.py), run through
Typer's CliRunner on a group of their own until they are registered in cli/main.py."""

from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

import compatindex
from compatindex_cli.backup import backup
from compatindex_cli.compact import compact

app = typer.Typer()
app.command("compact")(compact)
app.command("backup")(backup)


def make(path, rng):
    with compatindex.open(path) as ix:
        ix.create_version("v1", dim=32)
        ix.add(np.arange(4000), rng.standard_normal((4000, 32)).astype(np.float32))
        for _ in range(4):
            ix.backfill(np.arange(4000), rng.standard_normal((4000, 32)).astype(np.float32), version="v1")


def test_compact_command_reclaims_dead_vectors(tmp_path, rng):
    path = tmp_path / "ix"
    make(path, rng)
    before = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    r = CliRunner().invoke(app, ["compact", str(path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output.strip().splitlines()[-1])
    assert info["dead_rows"] == 4 * 4000
    after = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert after == info["disk_bytes_after"] and after < 0.4 * before
    with compatindex.open(path, readonly=True) as ro:
        assert ro.count == 4000 and ro.verify() == []
    r = CliRunner().invoke(app, ["compact", str(path)])
    assert r.exit_code == 0 and "compacted INDEX" in r.output


def test_backup_command_copies_and_refuses_an_existing_dest(tmp_path, rng):
    path = tmp_path / "ix"
    make(path, rng)
    with compatindex.open(path) as writer:  # the writer holds its lock: backup opens read-only beside it
        writer.add([10 ** 6], np.ones((1, 32), np.float32))
        r = CliRunner().invoke(app, ["backup", str(path), str(tmp_path / "bk")])
        assert r.exit_code == 0, r.output
        assert "backed up INDEX" in r.output
    with compatindex.open(tmp_path / "bk", readonly=True) as bk:
        assert bk.count == 4001 and bk.verify() == []
        assert bk.stats()["storage"]["dead_vector_bytes"] == 0
    r = CliRunner().invoke(app, ["backup", str(path), str(tmp_path / "bk")])
    assert r.exit_code == 1 and "already exists" in r.output
