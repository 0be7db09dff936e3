"""FastAPI server over the exported ONNX models (CONTRACTS "HTTP API"); imports no torch.

``create_app`` lives in :mod:`serving.app`; run ``python -m serving --model-dir models/NAME``.
"""
