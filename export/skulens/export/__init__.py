"""Export: PyTorch models (CLIP ViT-B/32, EfficientNet-Lite0) → ONNX + the model contract's sidecar files.

The only room that imports torch (install the `export` extra). Checks parity against PyTorch at export and
writes `manifest.json` / `preprocess.json` through `skulens.model`; nothing in serving imports this room.
"""
