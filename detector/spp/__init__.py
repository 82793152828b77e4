"""sppdet.detector.spp: spatial pyramid pooling: window -> conv cells, bins, pooling, best scale."""
