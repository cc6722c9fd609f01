"""Inference engines: the trained Keras model exported to LiteRT (default) or ONNX Runtime, and the
one interface every forward pass goes through (evaluate, batch prediction, the service).

TensorFlow stays for training (THE preprocessing is Pillow's); the forward pass of a trained model
is 2-4x faster on an exported engine on CPU (benchmarks/engines.py), outputs within 1e-5 of Keras.
`agreement` is the export stage's check that an export did not change what the model says. A
reduced-precision export (float16, int8) changes the numbers by design: the register gate judges
it by its test metric against the float model's instead (imgclf.registry.gate.engine_problem).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

EngineKind = Literal["litert", "onnx", "keras"]
Precision = Literal["float32", "float16", "int8"]
ENGINE_FILES: dict[str, str] = {"litert": "model.tflite", "onnx": "model.onnx"}
ENGINE_TAG = "engine"  # a registry version's tag: the run artifact of its exported engine
ONNX_OPSET = 17


class Engine(Protocol):
    """A forward pass: a (n, S, S, 3) float32 batch of [0, 1] images -> the model's raw outputs,
    (n, 1) for a sigmoid head or (n, K) for a softmax head."""

    kind: str
    image_size: int
    outputs: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def engine_threads(requested: int = 0) -> int:
    """0 means every core this process may use."""
    return requested or len(os.sched_getaffinity(0))


def export_engine(model, kind: EngineKind, path: Path, precision: Precision = "float32") -> Path:
    """Convert a Keras model for `kind` at `precision` and write it to `path`. float32 keeps the
    weights unchanged; float16 (LiteRT only) stores them as float16; int8 is dynamic-range
    quantisation: int8 weights, activations quantised on the fly, no calibration data."""
    if kind == "litert":
        path.write_bytes(_litert_converter(model, precision).convert())
    elif kind == "onnx":
        _export_onnx(model, path, precision)
    else:
        raise ValueError(f"nothing to export for engine {kind!r}")
    return path


def _litert_converter(model, precision: Precision):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision != "float32":
        # With no representative dataset, DEFAULT is weight-only (dynamic-range) quantisation.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def _export_onnx(model, path: Path, precision: Precision) -> None:
    import tensorflow as tf
    import tf2onnx

    if precision == "float16":  # ExportParams refuses it; onnxconverter-common is not a dependency
        raise ValueError("export.precision float16 needs engine litert")
    spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="images")]
    # tf2onnx traces `model.output_names`, which Keras 3 functional models lack.
    model.output_names = [model.outputs[0].name.split("/")[0]]
    with tempfile.TemporaryDirectory(prefix="imgclf-onnx-") as scratch:
        float_path = path if precision == "float32" else Path(scratch) / path.name
        tf2onnx.convert.from_keras(
            model, input_signature=spec, opset=ONNX_OPSET, output_path=float_path
        )
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(float_path, path, weight_type=QuantType.QUInt8)


@dataclass
class LiteRTEngine:
    """A LiteRT interpreter (XNNPACK) resized to each batch size it meets. An interpreter is not
    thread-safe, so calls are serialised; the service drives it from one batching thread anyway."""

    kind = "litert"
    path: Path
    threads: int = 0

    def __post_init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(
            model_path=str(self.path), num_threads=engine_threads(self.threads)
        )
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.image_size = int(self._input["shape"][1])
        self.outputs = int(self._output["shape"][-1])
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if len(batch) != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"]).copy()


@dataclass
class OnnxEngine:
    """An ONNX Runtime session on the CPU, every graph optimisation on."""

    kind = "onnx"
    path: Path
    threads: int = 0

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = engine_threads(self.threads)
        self._session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._input_name = inputs.name
        self.image_size = int(inputs.shape[1])
        self.outputs = int(outputs.shape[-1])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run(None, {self._input_name: batch})[0]


class KerasEngine:
    """The Keras model itself, through one traced graph with an open batch dimension."""

    kind = "keras"

    def __init__(self, model) -> None:
        import tensorflow as tf

        shape = tuple(model.input_shape)
        self.image_size = int(shape[1])
        self.outputs = int(model.output_shape[-1])
        self._forward: Callable = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec((None, *shape[1:]), tf.float32)],
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(np.asarray(batch, dtype=np.float32)).numpy()


def load_engine(path: Path, threads: int = 0) -> Engine:
    """The engine for an exported file, chosen by its name (model.tflite, model.onnx)."""
    kinds = {name: kind for kind, name in ENGINE_FILES.items()}
    if path.name not in kinds:
        raise ValueError(f"{path}: not an exported engine ({', '.join(kinds)})")
    if not path.is_file():
        raise FileNotFoundError(f"no exported engine at {path}")
    engine = LiteRTEngine if kinds[path.name] == "litert" else OnnxEngine
    return engine(path, threads)


@dataclass(frozen=True)
class Agreement:
    """How far an engine's class probabilities are from Keras's on the same images."""

    images: int
    max_abs_diff: float
    flipped: int  # images whose predicted class differs

    def within(self, tolerance: float) -> bool:
        return self.flipped == 0 and self.max_abs_diff <= tolerance


def agreement(reference: np.ndarray, exported: np.ndarray, threshold: float) -> Agreement:
    """Compare two (n, K) class-probability matrices by THE decision rule."""
    from imgclf.model.decision import predicted_indices

    changed = predicted_indices(reference, threshold) != predicted_indices(exported, threshold)
    return Agreement(
        images=len(reference),
        max_abs_diff=float(np.max(np.abs(reference - exported), initial=0.0)),
        flipped=int(np.sum(changed)),
    )
