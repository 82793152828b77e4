"""sppdet.detector.features: the conv5 cache (SPP) and the R-CNN pool5 store, written and read."""
