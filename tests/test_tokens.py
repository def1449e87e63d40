"""The token-sequence API generators use, checked across backends: PyTorch `Tokenizer`, ONNX Runtime
`OnnxTokenizer` and a live `vqtok serve` give the same codes, sequences and decodes for the fixture photos."""
from __future__ import annotations

import io
import re

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import vqtok
from _serving import PHOTOS, REPO, TINY, LiveServer, models_dir
from vqtok.export.runtime import OnnxTokenizer
from vqtok.tokenizer.contract import flatten, unflatten
from vqtok.tokenizer.model import Tokenizer, to_uint8


@pytest.fixture(scope="module")
def torch_tok() -> Tokenizer:
    return Tokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def onnx_tok() -> OnnxTokenizer:
    return OnnxTokenizer.from_pretrained(TINY, threads=1)


# -- flatten / unflatten ----------------------------------------------------------------------------------------
def test_flatten_is_raster_order_for_numpy_torch_and_lists():
    grid = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    seq = flatten(grid)
    assert seq.shape == (2, 12) and seq[1, 1 * 4 + 2] == grid[1, 1, 2]            # token t = i·w + j
    assert np.array_equal(unflatten(seq, (3, 4)), grid)
    t = torch.from_numpy(grid).transpose(1, 2)                                       # non-contiguous [2, 4, 3]
    ts = flatten(t)
    assert isinstance(ts, torch.Tensor) and torch.equal(ts[0], t[0].reshape(-1))
    assert torch.equal(unflatten(ts, (4, 3)), t)
    assert flatten([[1, 2], [3, 4]]).tolist() == [1, 2, 3, 4]                      # one grid → one sequence
    assert unflatten([1, 2, 3, 4], (2, 2)).tolist() == [[1, 2], [3, 4]]
    assert vqtok.flatten is flatten and vqtok.unflatten is unflatten               # public, torch-free


def test_flatten_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"\[h, w\] or \[B, h, w\]"):
        flatten(np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="h·w = 3·4 = 12"):
        unflatten(np.zeros((2, 10)), (3, 4))


# -- torch vs ONNX ----------------------------------------------------------------------------------------------
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("policy", ["resize", "native"])
def test_torch_and_onnx_give_the_same_codes_and_sequences(torch_tok, onnx_tok, policy):
    for photo in PHOTOS[:3]:
        if policy == "resize":
            sources = [photo, Image.open(photo), photo.read_bytes()]                    # paths, PIL, bytes
        else:  # the fixture photos exceed the tiny model's max side: a small, odd-sized copy (padded to f)
            small = Image.open(photo).convert("RGB").resize((101, 75))
            sources = [small, _png(small), np.asarray(small)]                           # PIL, bytes, uint8 array
        ref = onnx_tok.encode([sources[0]], policy=policy)                             # int64 [1, h, w] numpy
        assert ref.shape == ((1, 16, 16) if policy == "resize" else (1, 19, 26))
        for src in sources:
            codes = torch_tok.encode([src], policy=policy)
            assert isinstance(codes, torch.Tensor) and codes.dtype == torch.int64
            assert np.array_equal(codes.numpy(), ref), photo.name
            assert np.array_equal(onnx_tok.encode([src], policy=policy), ref)
        assert np.array_equal(flatten(codes).numpy(), flatten(ref))


def test_torch_encode_of_images_equals_encode_of_the_prepared_tensor(torch_tok, onnx_tok):
    batch, _ = onnx_tok.prepare(PHOTOS[:2])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(torch_tok.encode(x), torch_tok.encode(PHOTOS[:2]))
    assert torch.equal(torch_tok.encode(batch), torch_tok.encode(PHOTOS[:2]))         # a uint8 batch, as ONNX


def test_decode_sequence_on_both_backends(torch_tok, onnx_tok):
    codes = onnx_tok.encode(PHOTOS[:2])
    seq, shape = flatten(codes), codes.shape[1:]
    assert shape == (16, 16)                                                          # the default S/f grid
    onnx_img = onnx_tok.decode_sequence(seq, shape)
    assert np.array_equal(onnx_img, onnx_tok.decode(codes))
    assert np.array_equal(onnx_tok.decode_sequence(seq), onnx_img)                    # default shape
    assert np.array_equal(onnx_tok.decode_sequence(seq[0], shape), onnx_img[:1])      # one sequence
    torch_img = to_uint8(torch_tok.decode_sequence(torch.from_numpy(seq), shape)).numpy()
    assert torch.equal(torch_tok.decode_sequence(torch.from_numpy(seq)), torch_tok.decode(torch.from_numpy(codes)))
    assert np.abs(torch_img.astype(int) - onnx_img.astype(int)).max() <= 1           # the export parity bound
    with pytest.raises(ValueError, match="h·w"):
        onnx_tok.decode_sequence(seq, (8, 8))


def test_embed_and_latents(torch_tok):
    codes, latents = torch_tok.encode(PHOTOS[:2], return_latents=True)
    cfg = torch_tok.config
    assert latents.shape == (2, cfg.code_dim, 16, 16)
    assert torch.allclose(latents.norm(dim=1), torch.ones(2, 16, 16), atol=1e-5)      # l2-normalised codes
    vectors = torch_tok.embed(codes)                                                   # [B, d, h, w]
    table = torch_tok.quantizer.lookup_table()
    assert torch.equal(vectors[1, :, 3, 5], table[codes[1, 3, 5]])
    # the code of each position is the codebook vector nearest its latent
    dist = ((latents.permute(0, 2, 3, 1)[..., None, :] - table) ** 2).sum(-1)        # [B, h, w, K]
    assert (dist.argmin(-1) == codes).float().mean() >= 0.999
    z = torch_tok.embed(codes.numpy(), decoder_input=True)                             # numpy codes accepted
    assert z.shape == (2, cfg.latent_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch_tok.decoder(z).clamp(-1, 1), torch_tok.decode(codes))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        torch_tok.embed(torch.full((1, 2, 2), 64))


# -- and a live server ------------------------------------------------------------------------------------------
def test_server_gives_the_same_codes_sequences_and_decodes(tmp_path, onnx_tok, torch_tok):
    d = models_dir(tmp_path)
    with LiveServer(["--models-dir", str(d), "--threads", "1"], log=tmp_path / "serve.log") as srv:
        client = vqtok.Client(srv.url)
        for photo in PHOTOS[:3]:
            served = client.encode(photo)                                               # [h, w]
            local = onnx_tok.encode([photo])[0]
            assert np.array_equal(served, local), photo.name
            assert np.array_equal(served, torch_tok.encode([photo])[0].numpy())
            seq = flatten(served)
            # the server decodes a flat raster sequence given its shape, like decode_sequence
            r = httpx.post(srv.url + "/v1/decode", json={"codes": seq.tolist(), "shape": list(served.shape)},
                           timeout=120)
            assert r.status_code == 200, r.text
            served_img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
            assert np.array_equal(served_img, onnx_tok.decode_sequence(seq, served.shape)[0])
            assert np.array_equal(np.asarray(client.decode(unflatten(seq, served.shape))), served_img)
        client.close()


# -- docs/TOKENS.md ---------------------------------------------------------------------------------------------
def test_tokens_md_examples_run(monkeypatch, capsys):
    """The worked example of docs/TOKENS.md, every ```python block in order in one namespace, from the repo root."""
    text = (REPO / "docs" / "TOKENS.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/TOKENS.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["seq"].shape == (2, 1024) and namespace["images"].shape == (2, 256, 256, 3)
    assert "of codes agree" in capsys.readouterr().out


def test_one_loading_name():
    """`from_pretrained` on both tokenizers; the old ONNX name still works, with a DeprecationWarning."""
    assert OnnxTokenizer.from_pretrained.__func__ is not OnnxTokenizer.from_dir.__func__
    with pytest.warns(DeprecationWarning, match="from_pretrained"):
        old = OnnxTokenizer.from_dir(TINY, threads=1, graphs=("decoder",))
    assert old.graphs == ("decoder",) and old.metadata == OnnxTokenizer.from_pretrained(TINY).metadata
