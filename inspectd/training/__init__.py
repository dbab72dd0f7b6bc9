"""Training the U-Net (torch, the `train` extra): model, data sampling and augmentation,
training and fine-tuning, ONNX export with its model card and envelope, int8 quantisation,
TensorRT engine builds. Inference lives in `inspectd.analysis.engines`."""
