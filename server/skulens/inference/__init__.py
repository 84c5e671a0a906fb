"""Inference: tensors → unit-norm embeddings on ONNX Runtime.

`encoder` (one ONNX session per tower, checked against the manifest), `batcher` (micro-batches across calls),
`engine` (the `Encoder` the service uses: decode pool + batcher + towers), `tokenizer` (CLIP BPE, torch-free),
`cost_model` and `fair_pool` (what a request costs, who decodes next). Uses `skulens.imaging` and
`skulens.model`; never imports the catalog or the service.
"""
