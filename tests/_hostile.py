"""The catalogue of hostile requests: each with the exact 4xx status and error code the server must answer.

`ERRORS` run in-process (tests/test_server.py); `CATALOGUE` (those plus `HOSTILE`) run against a live `vqtok serve`
in tests/hostile/. Server settings both use: `MAX_PIXELS` pixels, 1 MiB bodies, the tiny fixture model (S = 64,
f = 4, K = 64, max_side 256). docs/RELIABILITY.md lists the catalogue.
"""
from __future__ import annotations

import base64
import io
import struct
import zipfile

import numpy as np

from _serving import PHOTOS, TINY, png

MAX_PIXELS = 200_000  # above every fixture photo (≤ 433×288), below a 500×500 image
MAX_BODY_MB = 1.0
JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}
PNG = {"Content-Type": "image/png"}


def _bomb() -> bytes:
    """A PNG header claiming 100 Mpx (no pixel data): must be refused before anything is decoded."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


GOOD = base64.b64encode(PHOTOS[0].read_bytes()).decode()
ERRORS = [
    ("encode", dict(content=b'{"image": ', headers={"Content-Type": "application/json"}), 400, "invalid_json"),
    ("encode", dict(json=[GOOD]), 400, "invalid_json"),
    ("encode", dict(json={"image": "not base64!"}), 400, "invalid_base64"),
    ("encode", dict(json={}), 400, "bad_request"),
    ("encode", dict(content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=x"}), 400,
     "invalid_multipart"),
    ("encode", dict(content=b"abc", headers={"Content-Type": "multipart/form-data"}), 400, "invalid_multipart"),
    ("encode", dict(json={"image": GOOD, "policy": "stretch"}), 400, "invalid_parameter"),
    ("encode", dict(json={"image": GOOD, "format": "xml"}), 400, "invalid_parameter"),
    ("encode", dict(json={"images": [GOOD], "image": ""}), 400, "invalid_parameter"),  # both: which one? (schemathesis)
    ("reconstruct", dict(json={"images": [GOOD], "image": GOOD}), 400, "invalid_parameter"),
    ("encode", dict(json={"images": [GOOD], "model": None}), 400, "invalid_parameter"),  # null is not a string
    ("reconstruct", dict(content=b"--b\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\npng\r\n"
                         b"--b\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nnpy\r\n--b--\r\n",
                         headers={"Content-Type": "multipart/form-data; boundary=b"}), 400, "invalid_parameter"),
    ("encode", dict(json={"image": GOOD, "model": "nope"}), 404, "model_not_found"),
    ("encode", dict(json={"image": GOOD, "model": "../tiny-a"}), 404, "model_not_found"),
    ("encode", dict(json={"image": GOOD, "model": str(TINY)}), 404, "model_not_found"),
    ("encode", dict(content=b"\0" * (1024 * 1024 + 1), headers={"Content-Type": "image/png"}), 413,
     "payload_too_large"),
    ("encode", dict(content=png(np.zeros((500, 500, 3), np.uint8)), headers={"Content-Type": "image/png"}), 413,
     "image_too_large"),
    ("encode", dict(content=_bomb(), headers={"Content-Type": "image/png"}), 413, "image_too_large"),
    ("reconstruct", dict(files={"image": ("x.png", png(np.zeros((260, 300, 3), np.uint8)), "image/png")},
                         data={"policy": "native"}), 413, "image_too_large"),
    ("encode", dict(content=b"GIF89a but not really", headers={"Content-Type": "image/gif"}), 415,
     "unsupported_image"),
    ("reconstruct", dict(json={"image": base64.b64encode(b"hello").decode()}), 415, "unsupported_image"),
    ("encode", dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    ("decode", dict(json={"codes": [[1.0, 2.0], [3.0, 4.0]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[1, 2], [3, 64]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[1, -1], [3, 4]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[1, 2], [3]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[True, False]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [["1", "2"]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[2**70, 1]]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": []}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [1, 2, 3], "shape": [2, 2]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [1, 2, 3, 4], "shape": [2, -2]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": np.zeros((65, 65), int).tolist()}), 422, "invalid_codes"),  # 260 px > max_side
    ("decode", dict(json={"codes": [[1, 2]], "codebook_sha256": "0" * 64}), 422, "codebook_mismatch"),
    ("decode", dict(content=b"\x93NUMPY garbage", headers={"Content-Type": "application/x-npy"}), 400,
     "invalid_npy"),
    ("decode", dict(json={"codes": [[1, 2]], "model": "nope"}), 404, "model_not_found"),
]



def npy_header(header: str, version: bytes = b"\x01\x00") -> bytes:
    """A .npy file's magic + header (np.save's layout) with an arbitrary header dict text."""
    h = header.encode("latin1")
    size = 4 if version != b"\x01\x00" else 2
    h += b" " * (-(len(h) + 7 + size) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H" if size == 2 else "<I", len(h)) + h


def npy_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def nested(depth: int, key: str) -> bytes:
    return b'{"' + key.encode() + b'": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def npz() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("codes.npy", npy_of(np.zeros((2, 2), np.int64)))
    return buf.getvalue()


LINE = png(np.zeros((1, 4000, 3), np.uint8))  # 96 bytes; scaled to S = 64 shorter side: 256,000×64 pixels
COLUMN = png(np.zeros((4000, 1, 3), np.uint8))
HOSTILE = [
    # work after preprocessing: the scaled copy of an extreme aspect ratio is bounded like a source image
    ("encode", dict(content=LINE, headers=PNG), 413, "image_too_large"),
    ("reconstruct", dict(content=COLUMN, headers=PNG), 413, "image_too_large"),
    ("encode", dict(json={"image": base64.b64encode(LINE).decode()}), 413, "image_too_large"),
    ("reconstruct", dict(content=LINE, headers=PNG, params={"policy": "native"}), 413, "image_too_large"),
    # parser depth
    ("decode", dict(content=nested(100_000, "codes"), headers=JSON), 400, "invalid_json"),
    ("encode", dict(content=nested(100_000, "image"), headers=JSON), 400, "invalid_json"),
    ("decode", dict(content=nested(500, "codes"), headers=JSON), 422, "invalid_codes"),
    # .npy: sizes, dtypes, header syntax
    ("decode", dict(content=npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (100000, 100000), }")
                    + b"\0" * 64, headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (lambda: 1), }"),
                    headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, -2), }"),
                    headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }") + b"\0" * 32,
                    headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_of(np.zeros((2, 2), [("a", "<i4"), ("b", "<i4")])), headers=NPY), 400,
     "invalid_npy"),
    ("decode", dict(content=npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }", b"\x03\x00")
                    + b"\0" * 32, headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }" + " " * 5000)
                    + b"\0" * 32, headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_of(np.zeros((2, 2), np.int64))[:-8], headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npz(), headers=NPY), 400, "invalid_npy"),
    ("decode", dict(content=npy_of(np.full((2, 2), 64, np.int64)), headers=NPY), 422, "invalid_codes"),
    ("decode", dict(content=npy_of(np.zeros((2, 2, 2, 2), np.int64)), headers=NPY), 422, "invalid_codes"),
    # JSON values of the wrong kind
    ("decode", dict(content=b'{"codes": [[NaN, 1]]}', headers=JSON), 422, "invalid_codes"),
    ("decode", dict(content=b'{"codes": [[1e400, 1]]}', headers=JSON), 422, "invalid_codes"),
    ("decode", dict(json={"codes": "1,2,3,4"}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [1], "shape": [10**9, 10**9]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [1, 2, 3, 4], "shape": [True, 4]}), 422, "invalid_codes"),
    ("decode", dict(json={"codes": [[1, 2]], "codebook_sha256": 7}), 400, "invalid_parameter"),
    ("decode", dict(json={"codes": [[1, 2]], "format": ["png"]}), 400, "invalid_parameter"),
    ("encode", dict(json={"image": 5}), 400, "invalid_base64"),
    ("encode", dict(json={"image": "data:image/png;base64,@@@"}), 400, "invalid_base64"),
    ("encode", dict(json={"image": GOOD, "model": ["tiny-a"]}), 400, "invalid_parameter"),
    ("encode", dict(json={"image": GOOD, "policy": 1}), 400, "invalid_parameter"),
    ("encode", dict(content=b"5", headers=JSON), 400, "invalid_json"),
    ("encode", dict(content=b'{"image": "\xff\xfe"}', headers=JSON), 400, "invalid_json"),
    ("encode", dict(content=b"", headers=PNG), 400, "bad_request"),
    ("encode", dict(content=PHOTOS[0].read_bytes()[:200], headers={"Content-Type": "image/jpeg"}), 415,
     "unsupported_image"),
    ("encode", dict(files={"photo": ("x.png", png(np.zeros((8, 8, 3), np.uint8)), "image/png")}), 400,
     "invalid_multipart"),
    ("encode", dict(files={f"f{i}": (None, "x") for i in range(40)}), 400, "invalid_multipart"),
    ("encode", dict(json={"image": GOOD}, params={"model": "nope"}), 404, "model_not_found"),
    ("encode", dict(content=b"\0" * 10, headers={"Content-Type": "application/xml"}), 415, "unsupported_media_type"),
]
CATALOGUE = ERRORS + HOSTILE
