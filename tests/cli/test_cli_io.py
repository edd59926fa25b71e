"""The CLI's input readers (cli/_io.py): formats, streaming, and every bad-input message."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compatindex_cli._io import InputFileError, check_unique, open_vectors, read_keys


def write_fvecs(path, x):
    x = np.asarray(x, dtype="<f4")
    rows = np.empty((x.shape[0], x.shape[1] + 1), dtype="<f4")
    rows[:, 0] = np.array([x.shape[1]], dtype="<i4").view("<f4")[0]
    rows[:, 1:] = x
    rows.tofile(path)


def collect(src, batch=3):
    parts = [b for _, b in src.batches(batch)]
    return np.concatenate(parts) if parts else np.zeros((0, src.dim), np.float32)


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_npy_dtypes_memory_mapped(tmp_path, x, dtype):
    p = tmp_path / "x.npy"
    np.save(p, x.astype(dtype))
    src = open_vectors(p)
    assert (src.n, src.dim, src.kind) == (10, 4, "npy")
    assert isinstance(src._arr, np.memmap)
    got = collect(src)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, x.astype(dtype).astype(np.float32))


def test_npy_single_vector_and_bad_shape(tmp_path):
    np.save(tmp_path / "one.npy", np.ones(5, np.float32))
    assert open_vectors(tmp_path / "one.npy").n == 1
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2), np.float32))
    with pytest.raises(InputFileError, match=r"expected a 2-d array .* \(2, 2, 2\)"):
        open_vectors(tmp_path / "cube.npy")


def test_npy_bad_dtype_and_garbage(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((2, 2), np.complex64))
    with pytest.raises(InputFileError, match="complex64"):
        open_vectors(tmp_path / "c.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(InputFileError, match="not a readable .npy file"):
        open_vectors(tmp_path / "junk.npy")


def test_missing_folder_and_unknown_suffix(tmp_path):
    with pytest.raises(InputFileError, match=r"VECTORS '.*nope.npy': no such file"):
        open_vectors(tmp_path / "nope.npy")
    with pytest.raises(InputFileError, match="is a folder"):
        open_vectors(tmp_path)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InputFileError, match=r"unsupported file type '.csv'.*\.npy, \.fvecs"):
        open_vectors(tmp_path / "x.csv", param="QUERIES")


def test_fvecs_roundtrip_and_bad_headers(tmp_path, x):
    p = tmp_path / "x.fvecs"
    write_fvecs(p, x)
    src = open_vectors(p)
    assert (src.n, src.dim) == (10, 4)
    np.testing.assert_array_equal(collect(src, 4), x)
    raw = np.fromfile(p, dtype="<i4")
    raw[5 * 5] = 7  # row 5's header
    raw.tofile(tmp_path / "bad.fvecs")
    with pytest.raises(InputFileError, match="row 5 has dim header 7, expected 4"):
        open_vectors(tmp_path / "bad.fvecs")
    (tmp_path / "short.fvecs").write_bytes(p.read_bytes()[:-4])
    with pytest.raises(InputFileError, match="not an .fvecs file"):
        open_vectors(tmp_path / "short.fvecs")


def test_parquet_fixed_and_variable_lists(tmp_path, x):
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(10)], "embedding": fixed, "lab": list(range(10))}),
                   tmp_path / "f.parquet", row_group_size=3)
    src = open_vectors(tmp_path / "f.parquet")
    assert (src.n, src.dim, src.columns) == (10, 4, ["id", "lab"])
    np.testing.assert_array_equal(collect(src, 4), x)
    assert read_keys("id", param="--ids", source=src) == [f"d{i}" for i in range(10)]
    assert read_keys("lab", param="--labels", source=src).tolist() == list(range(10))
    pq.write_table(pa.table({"v": pa.array(x.astype(np.float64).tolist())}), tmp_path / "l.parquet")
    np.testing.assert_allclose(collect(open_vectors(tmp_path / "l.parquet", column="v"), 7), x)


def test_parquet_errors(tmp_path, x):
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tmp_path / "nolist.parquet")
    with pytest.raises(InputFileError, match="cannot tell which column.*--column"):
        open_vectors(tmp_path / "nolist.parquet")
    with pytest.raises(InputFileError, match="--column 'zz'.*no such column"):
        open_vectors(tmp_path / "nolist.parquet", column="zz")
    with pytest.raises(InputFileError, match="--column 'a'.*expected a list of floats"):
        open_vectors(tmp_path / "nolist.parquet", column="a")
    ragged = [[1.0, 2.0], [1.0, 2.0], [3.0]]
    pq.write_table(pa.table({"vector": ragged}), tmp_path / "ragged.parquet")
    with pytest.raises(InputFileError, match="row 2 of column 'vector' has 1 values, expected 2"):
        collect(open_vectors(tmp_path / "ragged.parquet"))
    pq.write_table(pa.table({"vector": [[1.0], None]}), tmp_path / "null.parquet")
    with pytest.raises(InputFileError, match="row 1 of column 'vector' is null"):
        collect(open_vectors(tmp_path / "null.parquet"))
    src = open_vectors(tmp_path / "ragged.parquet")
    with pytest.raises(InputFileError, match="'nope' is neither a file nor a column"):
        read_keys("nope", param="--ids", source=src)


def test_jsonl(tmp_path, x):
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(json.dumps({"id": i, "vector": v.tolist(), "tag": "t"}) for i, v in enumerate(x)) + "\n\n")
    src = open_vectors(p)
    assert (src.n, src.dim) == (10, 4) and src.columns == ["id", "tag"]
    np.testing.assert_allclose(collect(src), x, rtol=1e-6)
    assert read_keys("id", param="--ids", source=src).tolist() == list(range(10))


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [1]}\n', "line 2 has a vector of 1 values, expected 2"),
        ('{"id": 1, "vector": [1, 2]}\n{oops\n', "line 2 is not valid JSON"),
        ('{"id": 1, "vec": [1, 2]}\n', 'line 1 has no "vector" field'),
        ('{"id": 1, "vector": [1, "a"]}\n', "must be a list of numbers"),
    ],
)
def test_jsonl_errors(tmp_path, text, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(InputFileError, match=match):
        open_vectors(p)


def test_check_finite_names_row_and_column(tmp_path, x):
    x[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    src = open_vectors(tmp_path / "nan.npy")
    with pytest.raises(InputFileError, match=r"row 7 holds nan at column 2"):
        for start, b in src.batches(3):
            src.check_finite(b, start)


def test_read_keys_txt_int_and_str(tmp_path):
    (tmp_path / "i.txt").write_text("3\n-4\n 5 \n")
    assert read_keys(str(tmp_path / "i.txt"), param="--ids").tolist() == [3, -4, 5]
    (tmp_path / "s.txt").write_text("3\nx\n5\n")
    assert read_keys(str(tmp_path / "s.txt"), param="--ids") == ["3", "x", "5"]
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(InputFileError, match="line 2 is empty"):
        read_keys(str(tmp_path / "gap.txt"), param="--ids")
    (tmp_path / "big.txt").write_text(f"{2**70}\n")
    with pytest.raises(InputFileError, match="does not fit in 64 bits"):
        read_keys(str(tmp_path / "big.txt"), param="--ids")


def test_read_keys_npy(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(4, dtype=np.int32))
    assert read_keys(str(tmp_path / "i.npy"), param="--ids").dtype == np.int64
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    assert read_keys(str(tmp_path / "s.npy"), param="--ids") == ["a", "b"]
    np.save(tmp_path / "f.npy", np.ones(3))
    with pytest.raises(InputFileError, match="integers or strings; got dtype float64"):
        read_keys(str(tmp_path / "f.npy"), param="--labels")
    np.save(tmp_path / "o.npy", np.array(["a", 1], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match="not a readable .npy array"):
        read_keys(str(tmp_path / "o.npy"), param="--ids")
    with pytest.raises(InputFileError, match=r"--ids '.*missing.txt': no such file"):
        read_keys(str(tmp_path / "missing.txt"), param="--ids")


def test_check_unique():
    check_unique(np.arange(5), what="--ids")
    with pytest.raises(InputFileError, match=r"repeats 2 id\(s\): 1, 3"):
        check_unique(np.array([1, 1, 3, 3, 4]), what="--ids 'x'")
    with pytest.raises(InputFileError, match="repeats 1 id"):
        check_unique(["a", "b", "a"], what="--ids 'x'")
