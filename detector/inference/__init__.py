"""The trained model as one object: ``Detector`` (load, predict), its portable model file and
its ONNX export. Imports nothing from the work-folder stages' CLI; writes no files while
predicting."""
