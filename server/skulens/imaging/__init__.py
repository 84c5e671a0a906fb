"""Imaging: photo bytes → decoded, oriented RGB → the model's input tensor (whole image or regions).

Header peeks (size before decoding), draft decoding, the decode limits and the image errors. Reads the model's
`preprocess.json` through `skulens.model`; knows nothing of ONNX, the catalog or gRPC.
"""
