"""SRC → a deterministic, ordered listing of items, and reading an item's bytes.

SRC is a folder (walked recursively; image files by extension, and `.tar` files inside it are read as WebDataset
shards), a `.tar` file, a glob or WebDataset brace pattern of tars (`shards-{000..099}.tar`), or a text file with one
image path per line (relative paths are relative to the list file; blank lines and `#` comments are skipped).
Folder entries are sorted by relative path; tar members keep their archive order (WebDataset sample order).
The listing must not change between a run and its resume: `listing_sha256` fingerprints it.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import os
import re
import tarfile
from pathlib import Path
from typing import NamedTuple

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm"})


class Item(NamedTuple):
    """One image of the source: `key` (what the row records), the file to read and, for tar members, where."""

    key: str
    path: str
    offset: int = -1  # byte offset of a tar member's data; -1 for a plain file
    size: int = -1  # byte size of a tar member; -1 for a plain file


def safe_key(name: str) -> str:
    """A key Parquet can store: undecodable bytes in file names (surrogate escapes) become `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_image_name(name: str, extensions: frozenset[str]) -> bool:
    return name.rsplit(".", 1)[-1].lower() in extensions if "." in name else False


def expand_braces(pattern: str) -> list[str]:
    """WebDataset brace ranges: `a-{000..002}.tar` → [`a-000.tar`, `a-001.tar`, `a-002.tar`] (zero padding kept)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for n in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[: m.start()] + str(n).zfill(width) + pattern[m.end():])
    return out


def list_tar(path: str, key_prefix: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """Image members of a tar in archive order; other members (`.json`, `.cls`, ...) are WebDataset metadata."""
    try:
        with tarfile.open(path, "r:") as tf:  # uncompressed only: members must be seekable in place
            return [Item(safe_key(f"{key_prefix}/{m.name}"), path, m.offset_data, m.size)
                    for m in tf if m.isfile() and _is_image_name(m.name, extensions)]
    except tarfile.ReadError as err:
        raise ValueError(f"{path} is not an uncompressed tar ({err}); WebDataset shards must be plain .tar "
                         "(decompress .tar.gz first)") from None


def list_folder(root: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """All image files under `root` (recursive, hidden entries skipped), sorted by relative path; tars expanded."""
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if not f.startswith(".") and (_is_image_name(f, extensions) or f.endswith(".tar")):
                rels.append(f if rel_dir == "." else Path(rel_dir, f).as_posix())
    items: list[Item] = []
    for rel in sorted(rels):
        full = os.path.join(root, rel)
        items += list_tar(full, rel, extensions) if rel.endswith(".tar") else [Item(safe_key(rel), full)]
    return items


def list_path_file(list_file: str) -> list[Item]:
    """A text file of image paths, in the file's order (every listed path is taken; a missing one is an error row)."""
    base = Path(list_file).resolve().parent
    items = []
    for line in Path(list_file).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(Item(safe_key(line), str(base / line)))
    return items


def list_source(src: str, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """SRC (folder, .tar, tar pattern, or path list) → ordered items. Raises FileNotFoundError with what to pass."""
    if os.path.isdir(src):
        return list_folder(src, extensions)
    if os.path.isfile(src) and src.endswith(".tar"):
        return list_tar(src, os.path.basename(src), extensions)
    if os.path.isfile(src):
        return list_path_file(src)
    tars = sorted(itertools.chain.from_iterable(glob.glob(p) for p in expand_braces(src)))
    if tars and all(t.endswith(".tar") for t in tars):
        common = os.path.commonpath([os.path.dirname(os.path.abspath(t)) for t in tars])
        return list(itertools.chain.from_iterable(
            list_tar(t, os.path.relpath(os.path.abspath(t), common), extensions) for t in tars))
    raise FileNotFoundError(f"source {src!r} is not a folder, a .tar, a pattern matching .tar files, or a text file "
                            "of image paths")


def listing_sha256(items: list[Item]) -> str:
    """Fingerprint of the listing (keys in order): a resume is only valid against the same listing."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.key.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def read_bytes(item: Item) -> bytes:
    """The item's raw bytes: the whole file, or the tar member's data read in place."""
    with open(item.path, "rb") as f:
        if item.offset < 0:
            return f.read()
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise OSError(f"tar member truncated: expected {item.size} bytes, read {len(data)}")
    return data
