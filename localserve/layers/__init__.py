"""Shared torch layers of the model files: linear (pluggable methods), embedding, RMSNorm,
rotary embedding, gated MLP and paged attention over the forward context."""
