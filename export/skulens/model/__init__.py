"""The model contract: what an exported model directory means, read from its sidecar files.

`manifest.json` (what the model is, its ONNX files with sha256, dims, fingerprint, tokenizer) and
`preprocess.json` (how pixels become the model's input) are written by `skulens.export` and read here by the
server. Torch-free and runtime-free: imports nothing of skulens but `skulens.errors`.
"""
