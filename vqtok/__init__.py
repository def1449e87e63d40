"""vqtok: the command-line entry point. The library lives in `tokenizer`, `export` and `server`."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vqtok")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.0.0+unknown"
