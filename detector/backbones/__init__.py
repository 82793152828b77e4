"""sppdet.detector.backbones: conv trunks, one module each, looked up through the registry; their
weights, preprocessing and checkpoints."""
