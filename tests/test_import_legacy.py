"""The shipped vqtok-f8-k1024 gives bit-identical codes, decode and training-forward outputs after the architecture
was generalised for `vqtok import`: tests/fixtures/legacy/reference.npz was computed by the code before that change
(tests/fixtures/legacy/make_reference.py, 1 thread)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqtok.tokenizer.model import Tokenizer, to_model_range


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was computed with 1 thread; float results depend on the split
    yield
    torch.set_num_threads(n)


def test_shipped_model_outputs_are_bit_identical_to_before_the_generalisation(repo_root, one_thread):
    ref = np.load(repo_root / "tests" / "fixtures" / "legacy" / "reference.npz")
    model = Tokenizer.from_pretrained("vqtok-f8-k1024")
    x = to_model_range(torch.from_numpy(ref["images"]))
    with torch.no_grad():
        codes = model.encode(x)
        np.testing.assert_array_equal(codes.numpy(), ref["codes"])
        np.testing.assert_array_equal(model.decode(codes).numpy(), ref["recon"])
        np.testing.assert_array_equal(model(x)[0].numpy(), ref["forward"])
