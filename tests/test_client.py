"""`server.client` (sync and async) and the CLI's server mode against a real `vqtok serve` subprocess."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _serving import PHOTOS, REPO, LiveServer, free_port, local_tokenizer, models_dir
from vqtok.server.client import (AsyncClient, BadRequest, Client, InvalidCodes, ModelNotFound, PayloadTooLarge,
                           ServerUnavailable, Unauthorized, UnsupportedImage)

KEY = "client-key"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    models_dir(root, ("tiny-a", "tiny-b"))
    return root


@pytest.fixture(scope="module")
def live(root):
    args = ["--models-dir", str(root / "models"), "--max-pixels", "200000", "--threads", "1"]
    with LiveServer(args, api_key=KEY, log=root / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def tok(root):
    return local_tokenizer(root / "models" / "tiny-a")


def test_sync_client_round_trip(live, tok):
    with Client(live.url, api_key=KEY) as c:
        assert c.health() and c.models()["default"] == "tiny-a"
        for photo in PHOTOS:
            codes = c.encode(photo, model="tiny-b")
            assert codes.dtype == np.int64 and codes.shape == (16, 16)
            np.testing.assert_array_equal(codes, tok.encode(photo)[0])
        image = c.decode(codes, codebook_sha256=tok.metadata.codebook_sha256)
        np.testing.assert_array_equal(np.asarray(image), tok.decode(codes)[0])
        pil = Image.open(PHOTOS[0])
        batch, _ = tok.prepare(pil)
        np.testing.assert_array_equal(np.asarray(c.reconstruct(pil)), tok.decode(tok.encode_array(batch))[0])
        info = c.encode_info(np.asarray(pil.convert("RGB")), policy="resize")
        assert info["codebook_sha256"] == tok.metadata.codebook_sha256 and info["shape"] == [16, 16]


def test_async_client_concurrent(live, tok):
    async def main():
        async with AsyncClient(live.url, api_key=KEY) as c:
            codes = await asyncio.gather(*[c.encode(p.read_bytes()) for p in PHOTOS])
            images = await asyncio.gather(*[c.decode(k) for k in codes])
            return codes, images, await c.models()

    codes, images, listing = asyncio.run(main())
    assert [m["id"] for m in listing["models"]] == ["tiny-a", "tiny-b"]
    for photo, k, img in zip(PHOTOS, codes, images):
        np.testing.assert_array_equal(k, tok.encode(photo)[0])
        np.testing.assert_array_equal(np.asarray(img), tok.decode(k)[0])


def test_lists_go_as_multi_item_requests(live, tok):
    """encode/decode of a list: one request per `batch` items, results in order, equal to local ONNX Runtime."""
    photos = [p.read_bytes() for p in PHOTOS] * 2
    with Client(live.url, api_key=KEY) as c:
        grids = c.encode(photos, batch=4)  # requests of 4 and 2 images
        want = tok.encode(photos)
        assert len(grids) == len(photos) and all(g.dtype == np.int64 for g in grids)
        np.testing.assert_array_equal(np.stack(grids), want)
        images = c.decode(grids, batch=4)
        np.testing.assert_array_equal(np.stack([np.asarray(im) for im in images]), tok.decode(want))
        assert len(c.encode(photos[:1])) == 1  # a one-item list is still a list
        infos = c.encode_info([photos[0], b"not an image", photos[1]])
        assert isinstance(infos[1], UnsupportedImage) and "item 1" in infos[1].message
        np.testing.assert_array_equal(infos[2]["codes"], want[1])
        with pytest.raises(UnsupportedImage, match="item 1"):
            c.encode([photos[0], b"not an image"])

    async def main():
        async with AsyncClient(live.url, api_key=KEY) as c:
            return await c.encode(photos[:3]), await c.decode(want[:3])

    agrids, aimages = asyncio.run(main())
    np.testing.assert_array_equal(np.stack(agrids), want[:3])
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in aimages]), tok.decode(want[:3]))


def test_each_error_class_has_its_exception(live):
    with Client(live.url, api_key=KEY) as c:
        cases = [
            (Unauthorized, lambda: Client(live.url, api_key="wrong").models()),
            (ModelNotFound, lambda: c.encode(PHOTOS[0], model="nope")),
            (UnsupportedImage, lambda: c.encode(b"definitely not an image")),
            (InvalidCodes, lambda: c.decode(np.full((4, 4), 64))),
            (InvalidCodes, lambda: c.decode(np.zeros((4, 4)), codebook_sha256="f" * 64)),
            (BadRequest, lambda: c.encode(PHOTOS[0], policy="stretch")),
            (PayloadTooLarge, lambda: c.encode(np.zeros((500, 500, 3), np.uint8))),
        ]
        for exc, call in cases:
            with pytest.raises(exc) as info:
                call()
            assert info.value.code and info.value.message and info.value.status >= 400
    with pytest.raises(ServerUnavailable):
        Client(f"http://127.0.0.1:{free_port()}", timeout=5).health()


def test_cli_server_mode_equals_local(live, root, tmp_path, tok):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "VQTOK_API_KEY": KEY}

    def vqtok(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "vqtok", *args], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r.stdout + r.stderr

    photo = str(PHOTOS[2])
    out = vqtok("encode", *map(str, PHOTOS), "--server", live.url, "-o", str(tmp_path / "many"))  # one request
    for p in PHOTOS:
        np.testing.assert_array_equal(np.load(tmp_path / "many" / f"{p.stem}.npy"), tok.encode(p)[0])
    vqtok("encode", photo, "--server", live.url, "-o", str(tmp_path / "c.npy"))
    codes = np.load(tmp_path / "c.npy")
    np.testing.assert_array_equal(codes, tok.encode(photo)[0])
    vqtok("decode", str(tmp_path / "c.npy"), "-o", str(tmp_path / "d.png"), "--server", live.url)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d.png")), tok.decode(codes)[0])
    out = vqtok("reconstruct", photo, "-o", str(tmp_path / "r.png"), "--server", live.url)
    local = vqtok("reconstruct", photo, "-o", str(tmp_path / "l.png"), "--local", "--model",
                  str(root / "models" / "tiny-a"))
    assert out.split("PSNR")[1] == local.split("PSNR")[1]
    served, local_png = (np.asarray(Image.open(tmp_path / n)) for n in ("r.png", "l.png"))
    np.testing.assert_array_equal(served, local_png)
    bad = subprocess.run([sys.executable, "-m", "vqtok", "encode", photo, "--server", live.url, "--model", "nope"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "unknown model" in bad.stderr and "Traceback" not in bad.stderr  # per file (21bb209)
