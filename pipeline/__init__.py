"""Offline dataset tokenization: images (folder, path list, WebDataset tars) → resumable Parquet shards of codes.

torch-free: uses `export.runtime.OnnxTokenizer` and `tokenizer.preprocess`. Roles:
`sources` (listing and reading), `work` (decode/prepare and encode, shared by both engines), `shards` (shard
assignment, atomic Parquet writes), `manifest` (run state, manifest.json, errors.jsonl, verification),
`local` (thread-pool engine), `ray_engine` (Ray Data engine), `run` (the entry point `tokenize_dataset`).
"""
