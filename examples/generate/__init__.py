"""A generator on vqtok tokens, end to end: photos → `vqtok tokenize` shards → a small transformer prior (causal,
or MaskGIT-style masked) → sampled code grids → images decoded by `vqtok serve` or in-process by `OnnxTokenizer`.

    python -m examples.generate --train DIR_OR_LIST --val DIR_OR_LIST --out OUT [--model ID] [--size S] [--steps N]

Modules: `data` (reads the shards through their manifest, refuses another tokenizer's codes), `prior` (the
transformer and its training loop), `sample` (sampling, code checks, decoding, the PNG grid). docs/GENERATE.md.
"""
