"""sppdet.detector: everything that is vision or learning (datasets, boxes, nets, SPP, heads)."""
