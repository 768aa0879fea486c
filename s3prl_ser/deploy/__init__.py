"""Shipping a trained recognizer: self-contained model directories, file and long-audio
inference, ONNX export and the Hugging Face Hub upload (see README, "Inference")."""
