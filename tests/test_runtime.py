"""The torch-free runtime over the committed tiny fixture graphs (tests/fixtures/tiny-model)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqtok.export.runtime import InvalidCodes, OnnxTokenizer, validate_codes

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny-model"
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def tok() -> OnnxTokenizer:
    return OnnxTokenizer.from_pretrained(TINY, threads=1)


def test_import_is_torch_free():
    code = ("import sys, vqtok.export, vqtok.export.runtime; from vqtok import OnnxTokenizer; "
            f"t = OnnxTokenizer.from_pretrained({str(TINY)!r}); t.decode(t.encode(np.zeros((64, 64, 3), np.uint8))); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", "import numpy as np; " + code], check=True)


def test_metadata_matches_config(tok):
    cfg = json.loads((TINY / "config.json").read_text())
    m = tok.metadata
    assert (m.model_id, m.factor, m.codebook_size, m.code_dim, m.image_size) == ("tiny-test", 4, 64, 4, 64)
    assert m.codebook_size == cfg["codebook_size"] and m.factor == 2 ** (len(cfg["channel_mult"]) - 1)
    assert len(m.codebook_sha256) == 64 and m.max_side >= m.image_size
    from vqtok.tokenizer.hub import read_codebook_sha256

    assert m.codebook_sha256 == read_codebook_sha256(TINY)


def test_encode_sources_agree(tok):
    """Path, bytes, PIL image and uint8 array of the same photo give the same codes ([B, S/f, S/f] int64)."""
    p = PHOTOS[0]
    arr = np.asarray(Image.open(p).convert("RGB"))
    codes = [tok.encode(src) for src in (p, str(p), p.read_bytes(), Image.open(p), arr)]
    assert codes[0].shape == (1, 16, 16) and codes[0].dtype == np.int64
    for c in codes[1:]:
        np.testing.assert_array_equal(c, codes[0])
    assert codes[0].min() >= 0 and codes[0].max() < 64


def test_encode_batch_and_list(tok):
    codes = tok.encode(PHOTOS)
    assert codes.shape == (len(PHOTOS), 16, 16)
    batch, crops = tok.prepare(PHOTOS)
    np.testing.assert_array_equal(tok.encode(batch), codes)  # a uint8 [B, H, W, 3] batch is taken as is
    assert crops[0].source_height == 288


def test_native_policy_keeps_size(tok):
    im = Image.open(PHOTOS[1]).resize((101, 67))
    codes = tok.encode(im, policy="native")
    assert codes.shape == (1, 17, 26)  # ceil(67/4), ceil(101/4): padded to a multiple of f
    assert tok.decode(codes).shape == (1, 68, 104, 3)
    with pytest.raises(ValueError, match="different sizes"):
        tok.encode([im, im.resize((64, 64))], policy="native")
    with pytest.raises(ValueError, match="at most 256 per side"):
        tok.encode(Image.new("RGB", (300, 8)), policy="native")


def test_decode_shapes(tok):
    codes = tok.encode(PHOTOS[:2])
    images = tok.decode(codes)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(tok.decode(codes[0]), images[:1])          # [h, w] → batch of one
    np.testing.assert_array_equal(tok.decode(codes[0].tolist()), images[:1])  # nested lists (JSON)
    rect = np.arange(3 * 5).reshape(1, 3, 5) % 64
    assert tok.decode(rect).shape == (1, 12, 20, 3)


def test_grid_layout(tok):
    """Codes are [B, H/f, W/f] (rows first); positions match torch's grid elementwise in tests/test_export.py."""
    wide = np.zeros((2, 32, 48, 3), np.uint8)
    assert tok.encode_array(wide).shape == (2, 8, 12)
    assert tok.decode(np.zeros((8, 12), int)).shape == (1, 32, 48, 3)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 4, 4), np.float32), "integers"),
    (np.zeros((1, 4, 4), bool), "integers"),
    ([["a", "b"]], "integers"),
    (np.full((1, 4, 4), 64), r"\[0, 64\)"),
    (np.full((1, 4, 4), -1), r"\[0, 64\)"),
    ([[1, 2], [3]], "rectangular"),
    (np.zeros((1, 1, 4, 4), int), "grid"),
    (np.zeros((1, 0, 4), int), "non-empty"),
    (np.zeros((1, 65, 4), int), "at most 256"),
])
def test_validator_rejects(tok, bad, match):
    with pytest.raises(InvalidCodes, match=match):
        tok.decode(bad)


def test_validator_standalone():
    out = validate_codes([[0, 1], [2, 3]], codebook_size=4, factor=8)
    assert out.dtype == np.int32 and out.shape == (1, 2, 2)
    assert issubclass(InvalidCodes, ValueError)
    with pytest.raises(InvalidCodes, match="limit is 2"):
        validate_codes(np.zeros((3, 2, 2), int), codebook_size=4, factor=8, max_batch=2)


def test_batch_limit_and_bad_input(tok):
    limited = OnnxTokenizer.from_pretrained(TINY, max_batch=2)
    with pytest.raises(ValueError, match="limit is 2"):
        limited.encode(PHOTOS[:3])
    with pytest.raises(ValueError, match="multiples of 4"):
        tok.encode_array(np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="policy"):
        tok.encode(PHOTOS[0], policy="stretch")


def test_missing_graphs_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqtok export"):
        OnnxTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="--fp16"):
        OnnxTokenizer.from_pretrained(TINY, precision="fp16")


def test_cuda_request_fails_loudly_without_gpu():
    import onnxruntime as ort

    try:
        tok = OnnxTokenizer.from_pretrained(TINY, device="cuda")
    except RuntimeError as err:
        assert "CUDAExecutionProvider did not activate" in str(err)
    else:  # a machine with a working GPU: the provider must really be active
        assert tok.encoder.get_providers()[0] == "CUDAExecutionProvider"
        assert "CUDAExecutionProvider" in ort.get_available_providers()


def test_session_config_reaches_ort_and_keeps_results(tok):
    x = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((64, 64)))[None]
    quiet = OnnxTokenizer.from_pretrained(TINY, threads=1, session_config={"session.intra_op.allow_spinning": "0"})
    assert quiet.encoder.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    np.testing.assert_array_equal(quiet.encode_array(x), tok.encode_array(x))


@pytest.mark.parametrize("raw, match", [("{bad", "JSON object of CUDA provider options"), ("[1]", "JSON object")])
def test_cuda_options_env_is_checked(monkeypatch, raw, match):
    from vqtok.export.runtime import _env_cuda_options

    monkeypatch.setenv("VQTOK_ORT_CUDA_OPTIONS", raw)
    with pytest.raises(ValueError, match=match):
        _env_cuda_options()
    monkeypatch.setenv("VQTOK_ORT_CUDA_OPTIONS", '{"prefer_nhwc": 1, "device_id": "0"}')
    assert _env_cuda_options() == {"prefer_nhwc": "1", "device_id": "0"}


@pytest.mark.parametrize("graphs", [("encoder",), ("decoder",)])
def test_one_graph_loads_only_that_session(tok, graphs):
    one = OnnxTokenizer.from_pretrained(TINY, threads=1, graphs=graphs)
    assert one.graphs == graphs and one.metadata == tok.metadata
    codes = tok.encode(PHOTOS[0])
    if graphs == ("encoder",):
        assert one.decoder is None
        np.testing.assert_array_equal(one.encode(PHOTOS[0]), codes)
        with pytest.raises(RuntimeError, match="no decoder"):
            one.decode(codes)
    else:
        assert one.encoder is None
        np.testing.assert_array_equal(one.decode(codes), tok.decode(codes))
        with pytest.raises(RuntimeError, match="no encoder"):
            one.encode(PHOTOS[0])


def test_graphs_are_checked(tmp_path):
    for bad in ((), ("encoder", "vae"), "encoder"):
        with pytest.raises(ValueError, match="subset"):
            OnnxTokenizer.from_pretrained(TINY, graphs=bad)
    with pytest.raises(ValueError, match="encoder path, a decoder path or both"):
        OnnxTokenizer(None, None)


def test_mem_pattern_reaches_ort_and_keeps_results(tok):
    x = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((64, 64)))[None]
    assert tok.encoder.get_session_options().enable_mem_pattern  # ORT's default stays the runtime's default
    lean = OnnxTokenizer.from_pretrained(TINY, threads=1, mem_pattern=False)
    assert [s.get_session_options().enable_mem_pattern for s in (lean.encoder, lean.decoder)] == [False, False]
    codes = lean.encode_array(np.concatenate([x, x]))
    np.testing.assert_array_equal(codes, tok.encode_array(np.concatenate([x, x])))
    np.testing.assert_array_equal(lean.decode(codes), tok.decode(codes))


def test_shared_arena_reaches_ort_and_keeps_results(tok):
    x = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((64, 64)))[None]
    shared = [OnnxTokenizer.from_pretrained(TINY, threads=1, shared_arena=True) for _ in range(2)]  # registered once
    for t in shared:
        for s in (t.encoder, t.decoder):
            assert s.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
        codes = t.encode_array(x)
        np.testing.assert_array_equal(codes, tok.encode_array(x))
        np.testing.assert_array_equal(t.decode(codes), tok.decode(codes))
