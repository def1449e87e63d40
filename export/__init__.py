"""ONNX export (`export.onnx`, needs torch, import it explicitly) and the torch-free runtime (`export.runtime`)."""
from vqtok.tokenizer.contract import ModelMetadata

from .runtime import InvalidCodes, OnnxTokenizer, validate_codes

__all__ = ["InvalidCodes", "ModelMetadata", "OnnxTokenizer", "validate_codes"]
