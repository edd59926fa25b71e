"""Every user error of issue 3: one line on stderr naming file/parameter/value, exit 1 (2 for
usage errors), no traceback, and the index left unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cli_testutil import DIM, add_v2, snapshot
from cli_testutil import cli, full, idx, rng, vecs  # noqa: F401  (fixtures)


@pytest.fixture
def before(full):
    return snapshot(full)


def unchanged(path, before):
    assert snapshot(path) == before


def test_missing_vectors_file(full, before, cli, tmp_path):
    cli.fails("add", full, tmp_path / "nope.npy", match=r"VECTORS '.*nope.npy': no such file")
    cli.fails("search", full, tmp_path / "q.npy", match=r"QUERIES '.*q.npy': no such file")
    unchanged(full, before)


def test_missing_ids_file(full, before, cli, vecs, tmp_path):
    cli.fails("add", full, vecs, "--ids", tmp_path / "ids.txt", match=r"--ids '.*ids.txt': no such file")
    cli.fails("delete", full, "--ids", tmp_path / "gone.npy", match=r"--ids '.*gone.npy': no such file")
    unchanged(full, before)


def test_wrong_dim(full, before, cli, tmp_path):
    np.save(tmp_path / "w.npy", np.ones((3, DIM + 1), np.float32))
    cli.fails("add", full, tmp_path / "w.npy", match=rf"'.*w.npy' holds vectors of dim {DIM + 1}; version 'v1' has dim {DIM}")
    cli.fails("search", full, tmp_path / "w.npy", match=rf"QUERIES .* dim {DIM + 1}")
    unchanged(full, before)


def test_bad_format(full, before, cli, tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"\x00garbage")
    cli.fails("add", full, tmp_path / "junk.npy", match=r"VECTORS '.*junk.npy' is not a readable .npy file")
    (tmp_path / "x.csv").write_text("1,2\n")
    cli.fails("add", full, tmp_path / "x.csv", match=r"unsupported file type '.csv'")
    (tmp_path / "x.jsonl").write_text('{"id": 1, "vector": [1, 2\n')
    cli.fails("add", full, tmp_path / "x.jsonl", match=r"line 1 is not valid JSON")
    unchanged(full, before)


def test_unknown_version(full, before, cli, vecs, tmp_path):
    cli.fails("add", full, vecs, "--version", "v9", match="v9")
    cli.fails("search", full, vecs, "--version", "v9", match="v9")
    np.save(tmp_path / "ids.npy", np.arange(20))
    cli.fails("backfill", full, vecs, "--ids", tmp_path / "ids.npy", "--version", "v9", match="v9")
    unchanged(full, before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(full, before, cli, tmp_path, bad):
    x = np.ones((70, DIM), np.float32)
    x[65, 3] = bad
    np.save(tmp_path / "bad.npy", x)
    # the bad row sits in the second batch: nothing of the first batch may be written
    cli.fails("add", full, tmp_path / "bad.npy", "--batch-size", 32, match=rf"'.*bad.npy': row 65 holds {bad} at column 3")
    cli.fails("search", full, tmp_path / "bad.npy", match="row 65")
    unchanged(full, before)


def test_zero_vector_under_cosine(full, before, cli, tmp_path):
    x = np.ones((5, DIM), np.float32)
    x[2] = 0
    np.save(tmp_path / "z.npy", x)
    cli.fails("add", full, tmp_path / "z.npy", match=r"'.*z.npy': row 2 is a zero vector.*cosine")
    unchanged(full, before)


def test_zero_vector_is_fine_under_ip(tmp_path, cli):
    path = tmp_path / "ip.index"
    cli("init", path, "--dim", 3, "--metric", "ip")
    np.save(tmp_path / "z.npy", np.zeros((2, 3), np.float32))
    cli("add", path, tmp_path / "z.npy", "--quiet")


def test_mismatched_lengths(full, before, cli, vecs, tmp_path):
    (tmp_path / "ids.txt").write_text("a\nb\n")
    cli.fails("add", full, vecs, "--ids", tmp_path / "ids.txt",
              match=r"--ids '.*ids.txt' holds 2 values but VECTORS '.*vecs.npy' holds 20 vectors")
    np.save(tmp_path / "labels.npy", np.arange(3))
    cli.fails("add", full, vecs, "--labels", tmp_path / "labels.npy", match=r"--labels .* holds 3 values")
    cli.fails("backfill", full, vecs, "--ids", tmp_path / "ids.txt", "--version", "v1", match="holds 2 values")
    unchanged(full, before)


def test_duplicate_ids_in_one_input(full, before, cli, vecs, tmp_path):
    (tmp_path / "ids.txt").write_text("\n".join(["x"] * 2 + [f"i{i}" for i in range(18)]) + "\n")
    cli.fails("add", full, vecs, "--ids", tmp_path / "ids.txt", match=r"--ids '.*ids.txt' repeats 1 id\(s\): 'x'")
    (tmp_path / "d.txt").write_text("1\n1\n")
    cli.fails("delete", full, "--ids", tmp_path / "d.txt", match="repeats")
    unchanged(full, before)


def test_ids_already_in_the_index(full, before, cli, vecs, tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(15, 35))
    cli.fails("add", full, vecs, "--ids", tmp_path / "ids.npy",
              match=r"5 of the ids .* are already in INDEX .*: 15, 16, 17, 18, 19.*backfill")
    unchanged(full, before)


def test_default_ids_colliding_after_a_delete(full, cli, vecs, tmp_path):
    (tmp_path / "d.txt").write_text("0\n")
    cli("delete", full, "--ids", tmp_path / "d.txt")
    before = snapshot(full)
    cli.fails("add", full, vecs, match=r"already in INDEX.*pass --ids")
    unchanged(full, before)


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_below_one_is_a_usage_error(full, cli, vecs, k):
    res = cli.fails("search", full, vecs, "-k", k, code=2)
    assert "-k" in res.stderr and k in res.stderr


def test_usage_errors_exit_2(tmp_path, cli):
    cli.fails("init", tmp_path / "a", "--dim", "0", code=2)
    cli.fails("init", tmp_path / "a", "--dim", "4", "--metric", "l1", code=2)
    cli.fails("init", tmp_path / "a", code=2)  # --dim missing
    cli.fails("add", tmp_path / "a", code=2)  # VECTORS missing
    cli.fails("search", tmp_path / "a", "q.npy", "--score", "max", code=2)
    cli.fails("backfill", tmp_path / "a", "v.npy", "--ids", "i.txt", code=2)  # --version missing
    cli.fails("frobnicate", code=2)
    assert not (tmp_path / "a").exists()


def test_backfill_ids_not_in_the_index(full, before, cli, tmp_path):
    add_v2(full)
    before = snapshot(full)
    np.save(tmp_path / "v2.npy", np.ones((3, 12), np.float32))
    (tmp_path / "ids.txt").write_text("1\n77\n2\n")
    cli.fails("backfill", full, tmp_path / "v2.npy", "--ids", tmp_path / "ids.txt", "--version", "v2", "--no-raw",
              match=r"1 of --ids '.*ids.txt' are not in INDEX .*: 77")
    unchanged(full, before)


def test_delete_unknown_ids_deletes_nothing(full, before, cli, tmp_path):
    (tmp_path / "ids.txt").write_text("1\n99\n")
    cli.fails("delete", full, "--ids", tmp_path / "ids.txt", match=r"not in INDEX .*: 99.*nothing was deleted")
    unchanged(full, before)


def test_init_on_an_existing_index(full, before, cli):
    cli.fails("init", full, "--dim", 4, match=r"INDEX '.*my.index' already holds an index")
    unchanged(full, before)


def test_init_on_a_folder_with_other_files(tmp_path, cli):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("keep me")
    cli.fails("init", tmp_path / "stuff", "--dim", 4, match="not empty")
    assert [p.name for p in (tmp_path / "stuff").iterdir()] == ["notes.txt"]


def test_init_failure_leaves_no_folder(tmp_path, cli):
    cli.fails("init", tmp_path / "bad", "--dim", 4, "--name", "", match="name")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["add", "{x}", "{v}"],
        ["search", "{x}", "{v}"],
        ["backfill", "{x}", "{v}", "--ids", "{i}", "--version", "v1"],
        ["delete", "{x}", "--ids", "{i}"],
        ["versions", "{x}"],
        ["info", "{x}"],
        ["verify", "{x}"],
    ],
)
def test_folder_that_is_not_an_index(tmp_path, cli, vecs, args):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an index")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(20))
    argv = [a.format(x=folder, v=vecs, i=ids) for a in args]
    cli.fails(*argv, match=r"plain")
    assert sorted(p.name for p in folder.iterdir()) == ["readme.txt"]
    cli.fails(*[a.replace(str(folder), str(tmp_path / "absent")) for a in argv], match=r"absent.*no such folder")
    assert not (tmp_path / "absent").exists()


def test_index_locked_by_another_writer(full, before, cli, vecs, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, compatindex
            ix = compatindex.open({str(full)!r}, create=False)
            print("ready", flush=True)
            sys.stdin.readline()
            ix.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        cli.fails("add", full, vecs, match=r"lock")
        (tmp_path / "d.txt").write_text("1\n")
        cli.fails("delete", full, "--ids", tmp_path / "d.txt", match=r"lock")
        cli.fails("init", full, "--dim", 4, match="already holds an index")
        # readers never wait for the writer
        res = cli("search", full, vecs, "-k", 1, "--json", "--quiet")
        assert len(res.stdout.splitlines()) == 20
    finally:
        holder.communicate("\n", timeout=60)
    unchanged(full, before)
