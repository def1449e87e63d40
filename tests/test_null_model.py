"""bench.null_model: a graph pair with a real tokenizer's I/O contract and metadata, served like any model."""
from __future__ import annotations

import numpy as np

from bench.null_model import build
from vqtok.export.onnx import read_metadata
from vqtok.export.runtime import OnnxTokenizer
from vqtok.server.registry import Registry

from _serving import PHOTOS, TINY


def test_null_model_keeps_the_tokenizer_contract(tmp_path):
    folder = build(tmp_path, "null-f8-k1024")
    for graph in ("encoder", "decoder"):  # the same metadata keys as a real export writes
        null, real = set(read_metadata(folder / f"{graph}.onnx")), set(read_metadata(TINY / f"{graph}.onnx"))
        # the tiny fixture was exported before `origin` (imported weights' provenance) joined the metadata
        assert real <= null and null - real <= {"origin"}, (null ^ real)
    entry = Registry.scan(tmp_path).get("null-f8-k1024")
    assert (entry.factor, entry.codebook_size, entry.image_size) == (8, 1024, 256)

    tok = OnnxTokenizer.from_pretrained(folder, threads=1)
    codes = tok.encode([PHOTOS[0].read_bytes(), PHOTOS[1].read_bytes()])
    assert codes.shape == (2, 32, 32) and codes.min() >= 0 and codes.max() < 1024
    assert len(np.unique(codes)) > 1  # it looks at the pixels
    images = tok.decode(codes)
    assert images.dtype == np.uint8 and images.shape == (2, 256, 256, 3)
    assert (images[0, :8, :8] == images[0, 0, 0]).all()  # one colour per code, repeated over f×f pixels
    wide = tok.decode(np.zeros((1, 4, 6), np.int64))  # any grid shape, as a real decoder
    assert wide.shape == (1, 32, 48, 3)
