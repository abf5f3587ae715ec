"""TFLite (float32, dynamic-range, float16, int8) and ONNX conversions, and runners that embed with them.

TFLite converts from the SavedModel this package writes (never `from_concrete_functions([f],
model)`, which silently drops the weights). The int8 model takes uint8 pixels and returns int8
codes; `TFLiteEmbedder` quantises the input and dequantises the output, so every variant is
called the same way: float images in, float32 embeddings out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from reprlearn.errors import ExportError

QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


def convert_tflite(saved_model: Path, quantize: str, representative: np.ndarray | None = None,
                   signature: str = "serving_default") -> bytes:
    """Converts one embedding signature of a SavedModel (`images` → `embedding`) to a TFLite flatbuffer.

    Args:
        saved_model: a SavedModel folder written by `write_saved_model`.
        quantize: one of `QUANTIZATIONS`.
        representative: `[n, H, W, C]` training images of that signature's input for int8 calibration (required
            for int8).
        signature: `serving_default` (a two-tower run: its query tower), or `embed_reference`.
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {list(QUANTIZATIONS)}. Received: quantize={quantize!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[signature])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if representative is None or len(representative) == 0:
            raise ExportError("int8 quantization needs representative images. Received: representative=None")

        def samples() -> Iterable[list[np.ndarray]]:
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # raw pixels are already 0-255 integers
        converter.inference_output_type = tf.int8
    return converter.convert()


class TFLiteEmbedder:
    """Runs a TFLite embedding model with LiteRT: float images in, float32 embeddings out (any quantization)."""

    def __init__(self, model: bytes | str | Path):
        """`model`: the path of a `.tflite` file (str or Path), or its bytes."""
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, (str, Path)):
            if not Path(model).is_file():
                raise ExportError(f"model must be a .tflite file or its bytes. Received: model={str(model)!r}")
            content = Path(model).read_bytes()
        else:
            content = bytes(model)
        self.interpreter = Interpreter(model_content=content)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def _quantize(self, images: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if not np.issubdtype(dtype, np.integer):
            return images.astype(dtype)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(dtype)

    def _dequantize(self, values: np.ndarray) -> np.ndarray:
        if not np.issubdtype(values.dtype, np.integer):
            return values.astype(np.float32)
        scale, zero_point = self.output["quantization"]
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def __call__(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        outputs = []
        for start in range(0, len(images), batch_size):
            batch = self._quantize(np.asarray(images[start:start + batch_size], np.float32))
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(self.input["index"], batch)
            self.interpreter.invoke()
            outputs.append(self._dequantize(self.interpreter.get_tensor(self.output["index"])))
        return np.concatenate(outputs)


def convert_onnx(saved_model: Path, path: Path, opset: int = 17, signature: str = "serving_default") -> None:
    """Converts one embedding signature of a SavedModel (`serving_default`, or `embed_reference`) to ONNX with
    tf2onnx."""
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model))
    function = loaded.signatures[signature]
    spec = function.structured_input_signature[1]["images"]
    embed = tf.function(lambda images: function(images=images)["embedding"], input_signature=[spec])
    tf2onnx.convert.from_function(embed, input_signature=[spec], opset=opset, output_path=str(path))


def onnx_embedder(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """An onnxruntime session as a function: float images in, float32 embeddings out."""
    import onnxruntime

    if not Path(path).is_file():
        raise ExportError(f"path must be an .onnx file. Received: path={str(path)!r}")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0]
