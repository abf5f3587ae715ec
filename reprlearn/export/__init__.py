"""Export for deployment: SavedModel (TF Serving), TFLite (LiteRT) and ONNX, each checked against Keras."""

from reprlearn.export.converters import TFLiteEmbedder, convert_onnx, convert_tflite, onnx_embedder
from reprlearn.export.run import ExportError, export_run, next_version
from reprlearn.export.savedmodel import write_saved_model

__all__ = ["ExportError", "TFLiteEmbedder", "convert_onnx", "convert_tflite", "export_run", "next_version",
           "onnx_embedder", "write_saved_model"]
