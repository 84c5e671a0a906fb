"""Client: what a calling application needs — `SkulensClient`, bulk enrolment and the health probe.

Depends only on the generated stubs (`skulens.v1`), `skulens.errors` and grpcio (+ its health stubs): importable
without ONNX Runtime, FAISS, numpy or torch (install skulens without a runtime extra).
"""

from skulens.client.client import ClientConfig, SkulensClient, image_input, search_options

__all__ = ["ClientConfig", "SkulensClient", "image_input", "search_options"]
