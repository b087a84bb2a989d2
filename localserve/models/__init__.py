"""Torch model definitions, one file per architecture family, over `localserve.layers`.

Every model: `__init__(arch: ModelArchConfig)`, `forward(input_ids [T], positions [T]) ->
hidden [T, H]` over the packed tokens of a step (attention metadata and KV caches come from
the forward context), and `compute_logits(hidden [N, H]) -> [N, vocab]` (the head's float dtype).
"""
