"""sppdet.detector.data: records, VOC and COCO readers, images (read, draw), synthetic VOC."""
