"""The models a server offers: every `<models_dir>/<id>/` holding `encoder.onnx` and `decoder.onnx`.

Request model ids are looked up in this table only; they are never joined onto a path. Metadata comes from the
encoder graph's `metadata_props` (read once at start-up, without creating ONNX Runtime sessions).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vqtok.tokenizer.contract import graph_files, read_model_metadata
from vqtok.tokenizer.hub import DEFAULT_MODEL, WEIGHTS_DIR, is_model_id

logger = logging.getLogger("vqtok.server")
GRAPHS = graph_files()  # the fp32 pair a servable model folder holds


class UnknownModel(KeyError):
    """A model id that is not in the registry."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    path: str
    factor: int
    codebook_size: int
    codebook_sha256: str
    image_size: int
    max_side: int
    metadata: dict = field(default_factory=dict)  # every metadata_props key of encoder.onnx

    def describe(self, default: bool) -> dict:
        return {"id": self.id, "default": default, "factor": self.factor, "codebook_size": self.codebook_size,
                "codebook_sha256": self.codebook_sha256, "image_size": self.image_size, "max_side": self.max_side,
                "metadata": dict(self.metadata)}


def read_entry(model_id: str, folder: Path) -> ModelEntry:
    """Read a model folder's ONNX metadata (validated by `tokenizer.contract.ModelMetadata`)."""
    meta, props = read_model_metadata(folder)
    return ModelEntry(id=model_id, path=str(folder.resolve()), factor=meta.factor, codebook_size=meta.codebook_size,
                      codebook_sha256=meta.codebook_sha256, image_size=meta.image_size, max_side=meta.max_side,
                      metadata=props)


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelEntry]
    default: str

    @classmethod
    def scan(cls, models_dir: str | Path | None = None, only: list[str] | None = None,
             default: str | None = None) -> "Registry":
        """All servable models under `models_dir` (default `tokenizer.hub.WEIGHTS_DIR`), optionally restricted."""
        root = Path(models_dir) if models_dir else WEIGHTS_DIR
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_model_id(p.name)
                 and all((p / g).is_file() for g in GRAPHS)} if root.is_dir() else {}
        if not found:
            raise FileNotFoundError(
                f"no servable models under {root}: a model folder needs {' and '.join(GRAPHS)}. Export one with "
                "`vqtok export MODEL`, or point --models-dir at a folder of exported models.")
        if only:
            missing = [m for m in only if m not in found]
            if missing:
                raise FileNotFoundError(f"--model {', '.join(missing)} not found under {root}; available: "
                                        f"{', '.join(found)}")
            found = {m: found[m] for m in only}
        if default is not None and default not in found:
            raise FileNotFoundError(f"default model {default!r} is not among the served models {list(found)}")
        if default is None:
            default = DEFAULT_MODEL if DEFAULT_MODEL in found else (only[0] if only else next(iter(found)))
            if default != DEFAULT_MODEL:
                logger.info("default model: %s (%s is not served)", default, DEFAULT_MODEL)
        return cls({mid: read_entry(mid, p) for mid, p in found.items()}, default)

    def get(self, model_id: str | None) -> ModelEntry:
        """The entry for `model_id` (None → the default). Raises `UnknownModel`."""
        key = self.default if model_id is None else model_id
        if not isinstance(key, str) or key not in self.models:
            raise UnknownModel(key)
        return self.models[key]

    def describe(self) -> dict:
        return {"default": self.default,
                "models": [e.describe(e.id == self.default) for e in self.models.values()]}
