"""sppdet.detector.evaluation: VOC devkit AP (ap, voc), VOC results files (results), COCO AP
(coco), and stand-in detections of a synthetic tree for exercising them (synthetic)."""
