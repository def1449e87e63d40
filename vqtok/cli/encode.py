"""`vqtok encode IMG...`: images → code grids, in-process with ONNX Runtime (`--local`, default) or through a
running server (`--server URL`). Also holds the local/server plumbing `decode` and `reconstruct` share."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vqtok.tokenizer.contract import POLICIES

HELP = "Encode images to code grids (.npy or JSON lines), locally with ONNX Runtime or via a vqtok server."


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--server", metavar="URL", default=os.environ.get("VQTOK_SERVER"),
                      help="use a running `vqtok serve` (default: $VQTOK_SERVER; otherwise local)")
    mode.add_argument("--local", action="store_true", help="run ONNX Runtime in this process (the default)")
    p.add_argument("--model", help="model id (server) or model folder / shipped id (local); default: the "
                   "default model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="local mode only (default cpu)")
    p.add_argument("--api-key", help="server mode: API key (default $VQTOK_API_KEY)")


class LocalBackend:
    """ONNX Runtime in this process (`export.runtime.OnnxTokenizer`)."""

    def __init__(self, model: str | None, device: str) -> None:
        from vqtok.export.runtime import OnnxTokenizer
        from vqtok.tokenizer.hub import DEFAULT_MODEL

        self.tok = OnnxTokenizer.from_pretrained(model or DEFAULT_MODEL, device=device)
        self.model = self.tok.metadata.model_id

    def encode(self, image: str, policy: str):
        batch, crops = self.tok.prepare(image, policy)
        return self.tok.encode_array(batch)[0], {"model": self.model, "input_size": [crops[0].height, crops[0].width],
                                                 "codebook_sha256": self.tok.metadata.codebook_sha256}

    def decode(self, codes):
        from PIL import Image

        return Image.fromarray(self.tok.decode(codes)[0], "RGB")

    def reconstruct(self, image: str, policy: str):
        from PIL import Image

        batch, crops = self.tok.prepare(image, policy)
        out = self.tok.decode(self.tok.encode_array(batch))[0][: crops[0].height, : crops[0].width]
        return Image.fromarray(out, "RGB")

    def geometry(self) -> tuple[int, int]:
        return self.tok.metadata.image_size, self.tok.factor


class RemoteBackend:
    """A running server, through `server.client.Client`."""

    def __init__(self, url: str, model: str | None, api_key: str | None) -> None:
        from vqtok.server.client import Client

        self.client, self.model = Client(url, api_key=api_key), model

    def encode(self, image: str, policy: str):
        info = self.client.encode_info(image, self.model, policy)
        import numpy as np

        return np.asarray(info.pop("codes"), dtype=np.int64), info

    def encode_many(self, images: list[bytes], policy: str) -> list:
        """(codes, info) or the server's error for each image: multi-image requests of `client.BATCH` images."""
        import numpy as np

        out = []
        for info in self.client.encode_info(images, self.model, policy):
            out.append(info if isinstance(info, Exception) else (np.asarray(info.pop("codes"), dtype=np.int64), info))
        return out

    def decode(self, codes):
        return self.client.decode(codes, self.model)

    def reconstruct(self, image: str, policy: str):
        return self.client.reconstruct(image, self.model, policy)

    def geometry(self) -> tuple[int, int]:
        listing = self.client.models()
        entry = next(m for m in listing["models"] if m["id"] == (self.model or listing["default"]))
        return entry["image_size"], entry["factor"]


def open_backend(args: argparse.Namespace):
    if args.server and not args.local:
        return RemoteBackend(args.server, args.model, args.api_key)
    return LocalBackend(args.model, args.device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    p.add_argument("-o", "--output", help="a .npy file (one image) or a folder for <stem>.npy files; "
                   "default: print one JSON line per image")
    p.add_argument("--policy", choices=POLICIES, default="resize",
                   help="resize: the model's square size; native: keep the pixels (padded to a multiple of f)")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vqtok.server.client import ServerUnavailable, VqtokError

    out = Path(args.output) if args.output else None
    single_file = out is not None and out.suffix == ".npy"
    if single_file and len(args.images) > 1:
        raise ValueError(f"{len(args.images)} images but -o {out} is one .npy file; pass a folder instead")
    backend = open_backend(args)
    if out is not None and not single_file:
        out.mkdir(parents=True, exist_ok=True)
    failed = 0
    batched = _encode_batched(backend, args.images, args.policy) if hasattr(backend, "encode_many") else {}
    for image in args.images:  # one bad file is reported and skipped; the others are still encoded
        try:
            if image in batched:
                if isinstance(batched[image], Exception):
                    raise batched[image]
                codes, info = batched[image]
            else:
                codes, info = backend.encode(image, args.policy)
        except ServerUnavailable as err:  # every later file would fail the same way
            raise ValueError(str(err)) from None
        except FileNotFoundError:
            failed += 1
            print(f"vqtok encode: {image}: no such file", file=sys.stderr)
            continue
        except (VqtokError, OSError, ValueError) as err:  # undecodable, too large, unreadable, refused by a server
            failed += 1
            print(f"vqtok encode: {image}: {err}", file=sys.stderr)
            continue
        if out is None:
            print(json.dumps({"image": image, **info, "shape": list(codes.shape), "codes": codes.tolist()}))
            continue
        dest = out if single_file else out / f"{Path(image).stem}.npy"
        np.save(dest, codes.astype(np.int64))
        print(f"{image} → {dest} ({codes.shape[0]}×{codes.shape[1]} codes)", file=sys.stderr)
    if failed:
        print(f"vqtok encode: {failed} of {len(args.images)} images failed", file=sys.stderr)
    return 1 if failed else 0


def _encode_batched(backend, images: list[str], policy: str) -> dict:
    """Server mode: every readable file in multi-image requests; {path: (codes, info) or its error}. Unreadable
    files are left out (the caller reports them)."""
    blobs = {}
    for image in dict.fromkeys(images):
        try:
            blobs[image] = Path(image).read_bytes()
        except OSError:
            continue
    if len(blobs) < 2:  # one image: the single-image request
        return {}
    return dict(zip(blobs, backend.encode_many(list(blobs.values()), policy)))
