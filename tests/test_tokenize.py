"""`vqtok tokenize` / `pipeline`: sources, rows equal to the runtime's codes, errors, resume, manifest, detokenize.

CI-sized: the committed tiny model (f=4, K=64, S=64) and the five fixture photos, plus files made in tmp_path.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vqtok.export.runtime import OnnxTokenizer
from vqtok.pipeline.manifest import verify
from vqtok.pipeline.run import tokenize_dataset
from vqtok.pipeline.sources import expand_braces, list_source
from vqtok.pipeline.work import Prepared, ShapeBatcher
from vqtok.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
TINY = str(FIXTURES / "tiny-model")
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def tok() -> OnnxTokenizer:
    return OnnxTokenizer.from_pretrained(TINY)


def read_rows(dst: Path) -> list[dict]:
    files = sorted(dst.glob("shard-*.parquet"))
    return pq.read_table(files).to_pylist() if files else []


def read_errors(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "errors.jsonl").read_text().splitlines()]


def photo_folder(root: Path) -> Path:
    """The fixture photos in a nested folder, plus a hidden file and a non-image that the listing must skip."""
    (root / "b" / "c").mkdir(parents=True)
    for i, p in enumerate(PHOTOS):
        shutil.copy(p, root / ("b/c" if i % 2 else "b") / p.name)
    (root / ".hidden.jpg").write_bytes(PHOTOS[0].read_bytes())
    (root / "b" / "notes.txt").write_text("not listed")
    return root


def test_folder_rows_equal_runtime_codes(tmp_path, tok):
    src, dst = photo_folder(tmp_path / "src"), tmp_path / "out"
    m = tokenize_dataset(str(src), dst, TINY, shard_size=2, batch_size=3, progress=False)
    rows = read_rows(dst)
    assert [r["key"] for r in rows] == sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg")
                                              if not p.name.startswith("."))
    assert [r["index"] for r in rows] == list(range(len(PHOTOS)))
    for r in rows:
        path = src / r["key"]
        expected = tok.encode(str(path), policy="resize")[0]  # one image per call: the server's path
        assert (r["grid_h"], r["grid_w"]) == expected.shape == (16, 16)
        np.testing.assert_array_equal(np.array(r["codes"]).reshape(16, 16), expected)
        assert r["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (r["width"], r["height"]) == Image.open(path).size
    assert pq.read_schema(dst / "shard-00000.parquet").field("codes").type.value_type == "int16"  # K = 64
    assert m["model"]["codebook_sha256"] == tok.metadata.codebook_sha256
    assert m["model"]["id"] == "tiny-test" and m["preprocessing"]["policy"] == "resize"
    assert m["totals"] == {"items": 5, "rows": 5, "errors": 0, "shards": 3}
    assert [s["rows"] for s in m["shards"]] == [2, 2, 1]
    assert verify(dst) == [] and (dst / "errors.jsonl").read_text() == ""


def _tar(path: Path, files: list[Path], with_metadata: bool = True) -> Path:
    with tarfile.open(path, "w") as tf:
        for p in files:
            tf.add(p, arcname=f"samples/{p.stem}.jpg")
            if with_metadata:  # WebDataset sample metadata: must be skipped, not reported as a bad image
                data = json.dumps({"name": p.stem}).encode()
                info = tarfile.TarInfo(f"samples/{p.stem}.json")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def test_tar_shards_give_the_folder_codes(tmp_path):
    _tar(tmp_path / "data-000.tar", PHOTOS[:3])
    _tar(tmp_path / "data-001.tar", PHOTOS[3:])
    assert expand_braces(str(tmp_path / "data-{000..001}.tar")) == [str(tmp_path / "data-000.tar"),
                                                                     str(tmp_path / "data-001.tar")]
    dst_tar, dst_dir = tmp_path / "out-tar", tmp_path / "out-dir"
    tokenize_dataset(str(tmp_path / "data-{000..001}.tar"), dst_tar, TINY, shard_size=2, progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in PHOTOS:
        shutil.copy(p, flat)
    tokenize_dataset(str(flat), dst_dir, TINY, shard_size=4, progress=False)
    a, b = read_rows(dst_tar), read_rows(dst_dir)
    assert [r["key"] for r in a] == [f"data-00{int(i >= 3)}.tar/samples/{p.stem}.jpg" for i, p in enumerate(PHOTOS)]
    assert [(r["sha256"], r["codes"], r["width"]) for r in a] == [(r["sha256"], r["codes"], r["width"]) for r in b]
    assert read_errors(dst_tar) == []
    one = tmp_path / "out-one"  # a single .tar as SRC
    tokenize_dataset(str(tmp_path / "data-001.tar"), one, TINY, progress=False)
    assert [r["codes"] for r in read_rows(one)] == [r["codes"] for r in b[3:]]


def test_bad_files_become_error_records_and_the_run_continues(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in PHOTOS[:2]:
        shutil.copy(p, src)
    (src / "a_empty.jpg").write_bytes(b"")
    (src / "b_text.png").write_text("this is not a PNG")
    (src / "c_truncated.jpg").write_bytes(PHOTOS[2].read_bytes()[:3000])
    Image.new("RGB", (600, 400), (10, 20, 30)).save(src / "d_big.png")
    (src / "e_huge_file.png").write_bytes(b"\x89PNG" + b"\0" * 300_000)
    dst = tmp_path / "out"
    m = tokenize_dataset(str(src), dst, TINY, shard_size=3, max_pixels=200_000, max_bytes=200_000, progress=False)
    errs = {e["key"]: e for e in read_errors(dst)}
    assert {k: e["kind"] for k, e in errs.items()} == {
        "a_empty.jpg": "empty", "b_text.png": "not_an_image", "c_truncated.jpg": "not_an_image",
        "d_big.png": "too_large", "e_huge_file.png": "too_large"}
    assert all(e["reason"] for e in errs.values())
    assert [r["key"] for r in read_rows(dst)] == sorted(p.name for p in PHOTOS[:2])
    assert m["totals"] == {"items": 7, "rows": 2, "errors": 5, "shards": 3} and verify(dst) == []


def test_path_list_and_a_missing_file(tmp_path, tok):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# fixture photos\n{PHOTOS[1]}\n\nmissing/nowhere.jpg\n{PHOTOS[0]}\n")
    dst = tmp_path / "out"
    tokenize_dataset(str(lst), dst, TINY, progress=False, tokenizer=tok)  # a loaded session is reused
    assert [r["key"] for r in read_rows(dst)] == [str(PHOTOS[1]), str(PHOTOS[0])]  # the list's order
    assert [(e["key"], e["kind"]) for e in read_errors(dst)] == [("missing/nowhere.jpg", "unreadable")]


def test_native_policy_mixed_shapes(tmp_path, tok):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    sizes = [(30, 22), (64, 48), (30, 22), (50, 70), (64, 48), (30, 22)]  # (w, h): three shapes, interleaved
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"{i}.png")
    dst = tmp_path / "out"
    tokenize_dataset(str(src), dst, TINY, policy="native", batch_size=2, shard_size=4, progress=False)
    rows = read_rows(dst)
    assert len(rows) == len(sizes)
    for r, (w, h) in zip(rows, sizes):
        expected = tok.encode(str(src / r["key"]), policy="native")[0]
        assert (r["width"], r["height"]) == (w, h) and (r["grid_h"], r["grid_w"]) == (-(-h // 4), -(-w // 4))
        np.testing.assert_array_equal(np.array(r["codes"]).reshape(expected.shape), expected)


def test_resume_rewrites_only_missing_shards_and_refuses_other_settings(tmp_path):
    src, dst = photo_folder(tmp_path / "src"), tmp_path / "out"
    tokenize_dataset(str(src), dst, TINY, shard_size=2, progress=False)
    before = read_rows(dst)
    (dst / "shard-00001.parquet").unlink()
    (dst / ".shard-00002.parquet.tmp999").write_bytes(b"half a file from a killed run")
    (dst / "manifest.json").unlink()
    written = []
    tokenize_dataset(str(src), dst, TINY, shard_size=2, batch_size=1, progress=False,
                     on_shard=lambda i, p: written.append(i))
    assert written == [1]
    assert read_rows(dst) == before and verify(dst) == []
    assert not list(dst.glob(".shard-*"))
    with pytest.raises(ValueError, match="shard_size"):
        tokenize_dataset(str(src), dst, TINY, shard_size=3, progress=False)
    with pytest.raises(ValueError, match="preprocessing"):
        tokenize_dataset(str(src), dst, TINY, shard_size=2, policy="native", progress=False)
    (src / "b" / "new.jpg").write_bytes(PHOTOS[0].read_bytes())
    with pytest.raises(ValueError, match="listing"):
        tokenize_dataset(str(src), dst, TINY, shard_size=2, progress=False)


def test_verify_catches_a_changed_shard(tmp_path):
    src, dst = photo_folder(tmp_path / "src"), tmp_path / "out"
    tokenize_dataset(str(src), dst, TINY, shard_size=2, progress=False)
    t = pq.read_table(dst / "shard-00000.parquet")
    pq.write_table(t.slice(0, 1), dst / "shard-00000.parquet")
    problems = verify(dst)
    assert any("sha256" in p for p in problems) and any("rows" in p for p in problems)
    assert main(["tokenize", "--verify", str(dst)]) == 1


def test_cli_tokenize_verify_detokenize(tmp_path, tok, capsys):
    src, dst, out = photo_folder(tmp_path / "src"), tmp_path / "out", tmp_path / "png"
    assert main(["tokenize", str(src), str(dst), "--model", TINY, "--shard-size", "2", "--no-progress"]) == 0
    assert "5 rows, 0 errors" in capsys.readouterr().out
    assert main(["tokenize", "--verify", str(dst)]) == 0
    assert main(["detokenize", str(dst), "--rows", "0,3-4", "-o", str(out)]) == 0  # model from the manifest
    pngs = sorted(out.glob("*.png"))
    assert [p.name[:6] for p in pngs] == ["000000", "000003", "000004"]
    rows = read_rows(dst)
    for p, r in zip(pngs, [rows[0], rows[3], rows[4]]):
        expected = tok.decode(np.array(r["codes"]).reshape(1, 16, 16))[0]
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected)
    assert main(["detokenize", str(dst), "--rows", "9", "-o", str(out)]) == 2  # out of range: a clear error
    assert "out of range" in capsys.readouterr().err


def test_listing_and_batching_are_deterministic(tmp_path):
    src = photo_folder(tmp_path / "src")
    assert list_source(str(src)) == list_source(str(src))
    assert [it.key for it in list_source(str(src))] == sorted(it.key for it in list_source(str(src)))
    b = ShapeBatcher(batch_size=2, max_buffered=3)
    shapes = [(4, 4, 3), (8, 4, 3), (4, 8, 3), (12, 4, 3), (4, 4, 3)]
    out = []
    for i, s in enumerate(shapes):
        out += [[p.index for p in batch] for batch in b.add(Prepared(i, "", "", 0, 0, np.zeros(s, np.uint8)))]
    out += [[p.index for p in batch] for batch in b.flush()]
    assert sorted(i for batch in out for i in batch) == list(range(5))
    assert all(len({shapes[i] for i in batch}) == 1 for batch in out)
    assert out == [[0], [1], [2], [3], [4]]  # cap of 3 buffered forces the largest (first) bucket out


def test_undecodable_file_name_is_stored_escaped(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as f:  # a Latin-1 name on a UTF-8 system
        f.write(PHOTOS[0].read_bytes())
    tokenize_dataset(str(src), tmp_path / "out", TINY, progress=False)
    assert [r["key"] for r in read_rows(tmp_path / "out")] == ["caf\\xe9.jpg"]


def test_size_option(tmp_path, tok):
    from vqtok.tokenizer.preprocess import prepare

    tokenize_dataset(str(FIXTURES / "photos"), tmp_path / "out", TINY, size=32, progress=False)
    r = read_rows(tmp_path / "out")[0]
    arr, _ = prepare(PHOTOS[0].read_bytes(), "resize", 32, 4)
    assert (r["grid_h"], r["grid_w"]) == (8, 8)
    assert r["codes"] == tok.encode_array(arr[None])[0].reshape(-1).tolist()
    with pytest.raises(ValueError, match="multiple of the model factor"):
        tokenize_dataset(str(FIXTURES / "photos"), tmp_path / "o2", TINY, size=30, progress=False)
    with pytest.raises(ValueError, match="resize only"):
        tokenize_dataset(str(FIXTURES / "photos"), tmp_path / "o3", TINY, size=32, policy="native", progress=False)


def test_pipeline_session_gives_the_same_codes(tok):
    """The engines encode without ORT spin-waiting (`load_tokenizer`): a scheduling setting, never other codes."""
    from vqtok.pipeline.work import load_tokenizer

    paths = [str(p) for p in PHOTOS]
    assert np.array_equal(load_tokenizer(TINY).encode(paths), tok.encode(paths))


def test_bench_comparator_is_the_faster_raw_session():
    """`pipeline.bench` compares against the faster of ORT's default session and the pipeline's own."""
    from vqtok.pipeline import bench

    out = bench.main([str(FIXTURES / "photos"), "--model", TINY, "--batch-size", "4", "--images", "8", "--rounds",
                      "1"])
    raws = {"pipeline": out["raw_pipeline_session_img_s"], "ort_default": out["raw_ort_default_session_img_s"]}
    assert out["raw_encode_img_s"] == max(raws.values()) == raws[out["raw_session"]]
    assert out["ratio"] == pytest.approx(out["pipeline_img_s"] / out["raw_encode_img_s"], rel=0.02)
