"""Inference: a checkpoint (or its ONNX export) to predictions; never imports imgcls.training."""
