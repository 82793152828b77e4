"""sppdet.detector.pretrain: an SPP classifier trained on image crops (samples, images, model,
resume, train) as a detection backbone, and its classify-eval (classifier, views, classify)."""
