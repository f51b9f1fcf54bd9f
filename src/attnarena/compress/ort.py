"""ONNX export and ONNX Runtime: a model's forward as an ONNX graph, run by ONNX Runtime
behind the model's own call signature, and the compression methods that end in it.

``export_onnx(model, call)`` traces one call of the model (``call(model)`` calls it, as a
task's loss does; every mechanism with a parallel form in that form first, which has no
loop over chunks) into a graph whose batch and length axes are dynamic, then checks the
graph in ONNX Runtime against the torch model at the traced shape and at four other batch
sizes and lengths. A graph that does not reproduce the model (a loop unrolled at the
traced length, an operator ONNX lacks) is refused with the reason, never saved.

``OrtModel`` wraps the graph in an ``InferenceSession`` and is called like the model it was
exported from (the same positional and keyword arguments, the same kind of output: a
tensor, a tuple, or a transformers ``ModelOutput``), so a task's evaluation and timing run
on it unchanged.

Methods (``attnarena compress --method ...``), each the last step of a recipe:

- ``ort``: the float32 graph.
- ``ort_int8``: ``onnxruntime.quantization.quantize_dynamic``: int8 weights per output
  channel, activations quantized to int8 at run time.
- ``ort_int8_static``: ``quantize_static``: int8 weights per channel and uint8
  activations with ranges calibrated on the task's training batches (QDQ format).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnarena.compress.onnx_forms import OPSET, register_forms
from attnarena.compress.recipe import register_method
from attnarena.subject import Subject, register_subject

TOLERANCE = 1e-3  # largest |graph - torch| allowed, relative to the largest |torch output|
MODEL_FILE, SIGNATURE_FILE = "model.onnx", "onnx_signature.json"


def onnxruntime():
    """The onnxruntime package, or one line naming the pip command."""
    from attnarena.extras import require

    require("onnx", "ONNX export", extra="compress")
    return require("onnxruntime", "ONNX Runtime methods", extra="compress")


# -- the call signature -------------------------------------------------------------------

_CONSTANTS = (type(None), bool, int, float, str)


@dataclass
class Signature:
    """How a model's call maps onto a graph's inputs and back.

    ``args``/``kwargs``: per argument either ``{"input": name, "dtype": d}`` (a tensor, a
    graph input, and the dtype it was traced with) or ``{"value": v}`` (a constant fixed
    when the graph was traced: None, a bool, a number); ``output``: ``{"kind": "tensor"}``,
    ``{"kind": "tuple", "size": n}`` or ``{"kind": "model_output", "class": "module:name",
    "keys": [...]}``."""
    args: list
    kwargs: dict
    output: dict

    def to_dict(self) -> dict:
        return {"args": self.args, "kwargs": self.kwargs, "output": self.output}

    @classmethod
    def from_dict(cls, saved) -> "Signature":
        if not isinstance(saved, dict) or not {"args", "kwargs", "output"} <= set(saved):
            raise ValueError(f"an ONNX signature needs args, kwargs and output, got "
                             f"{str(saved)[:80]}")
        return cls(list(saved["args"]), dict(saved["kwargs"]), dict(saved["output"]))

    @property
    def inputs(self) -> list[str]:
        entries = [*self.args, *self.kwargs.values()]
        return [e["input"] for e in entries if "input" in e]

    def feeds(self, args, kwargs) -> dict:
        """The graph's inputs from a call's arguments; a ValueError when the call differs
        from the traced one in a constant or in which arguments it gives."""
        if len(args) != len(self.args) or set(kwargs) != set(self.kwargs):
            raise ValueError(
                f"this ONNX model was exported for calls with {len(self.args)} positional "
                f"argument(s) and keywords {sorted(self.kwargs) or 'none'}; got {len(args)} "
                f"and {sorted(kwargs) or 'none'}")
        feeds = {}
        for where, entry, value in [*((f"argument {i}", e, v) for i, (e, v)
                                      in enumerate(zip(self.args, args))),
                                    *((k, self.kwargs[k], kwargs[k]) for k in kwargs)]:
            if "input" in entry:
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"{where} must be a tensor (the graph's input "
                                     f"{entry['input']!r}), got {type(value).__name__}")
                array = value.detach().cpu()
                array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
                want = entry.get("dtype")  # ids given as int32 where int64 was traced
                feeds[entry["input"]] = array if want is None else array.astype(want,
                                                                                 copy=False)
            elif not _same(value, entry["value"]):
                raise ValueError(f"{where} was {entry['value']!r} when this ONNX model was "
                                 f"exported and is fixed in its graph; got {value!r}")
        return feeds

    def rebuild(self, outputs: list):
        """The model's kind of output from the graph's outputs (numpy arrays)."""
        tensors = [torch.from_numpy(np.ascontiguousarray(o)) for o in outputs]
        kind = self.output["kind"]
        if kind == "tensor":
            return tensors[0]
        if kind == "tuple":
            return tuple(tensors)
        return _model_output_class(self.output["class"])(
            **dict(zip(self.output["keys"], tensors)))


def _model_output_class(path: str):
    """The transformers ``ModelOutput`` class a signature names ("module:name"); nothing
    else is imported or called from a saved signature."""
    module, _, name = path.partition(":")
    if not module.startswith("transformers.") or not name.isidentifier():
        raise ValueError(f"an ONNX signature's output class must be a transformers "
                         f"ModelOutput, got {path!r}")
    from transformers.utils import ModelOutput

    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelOutput)):
        raise ValueError(f"an ONNX signature's output class must be a transformers "
                         f"ModelOutput, got {path!r}")
    return cls


def _same(value, fixed) -> bool:
    if isinstance(value, torch.Tensor) or not isinstance(value, _CONSTANTS):
        return False
    return type(value) is type(fixed) and value == fixed or (value is None and fixed is None)


def _flatten_output(out) -> tuple[list, dict]:
    if isinstance(out, torch.Tensor):
        return [out], {"kind": "tensor"}
    if isinstance(out, tuple) and all(isinstance(o, torch.Tensor) for o in out):
        return list(out), {"kind": "tuple", "size": len(out)}
    if hasattr(out, "keys") and hasattr(out, "to_tuple"):  # a transformers ModelOutput
        keys = [k for k in out.keys() if isinstance(out[k], torch.Tensor)]
        cls = type(out)
        return [out[k] for k in keys], {"kind": "model_output", "keys": keys,
                                         "class": f"{cls.__module__}:{cls.__qualname__}"}
    raise ValueError(f"ONNX export takes a model whose forward returns a tensor, a tuple of "
                     f"tensors or a transformers ModelOutput; got {type(out).__name__}")


def capture_call(model: nn.Module, call) -> tuple[tuple, dict, object]:
    """(args, kwargs, output) of the first call of ``model``'s forward made by
    ``call(model)`` (a task's loss on a batch, a tokenized sentence through an encoder)."""
    seen = []

    def hook(module, args, kwargs, output):
        if not seen:
            seen.append((args, kwargs, output))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            call(model)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the call given to trace never called the model's forward")
    return seen[0]


def _signature(args, kwargs, output) -> tuple[Signature, list[torch.Tensor]]:
    tensors = []

    def entry(value, where):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return {"input": where, "dtype": str(value.dtype).removeprefix("torch.")}
        if isinstance(value, _CONSTANTS):
            return {"value": value}
        raise ValueError(f"ONNX export takes tensors and constants (None, bools, numbers, "
                         f"strings) as a model's arguments; {where} is a "
                         f"{type(value).__name__}")

    positional = [entry(v, f"input_{i}") for i, v in enumerate(args)]
    keywords = {k: entry(v, k) for k, v in kwargs.items()}
    _, spec = _flatten_output(output)
    return Signature(positional, keywords, spec), tensors


class _Flat(nn.Module):
    """The model called with its graph inputs in order, its outputs as a flat tuple."""

    def __init__(self, model, signature: Signature):
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, *tensors):
        given = dict(zip(self.signature.inputs, tensors))

        def value(entry):
            return given[entry["input"]] if "input" in entry else entry["value"]

        out = self.model(*[value(e) for e in self.signature.args],
                         **{k: value(e) for k, e in self.signature.kwargs.items()})
        return tuple(_flatten_output(out)[0])


def _dynamic_axes(signature: Signature, tensors, outputs) -> dict:
    """Batch (axis 0) and length (axis 1 of a (B, L) or (B, L, D) input) are dynamic; an
    image's (B, C, H, W) keeps its size; every output axis is left to the graph."""
    axes = {}
    for name, tensor in zip(signature.inputs, tensors):
        axes[name] = {0: "batch"} if tensor.dim() else {}
        if tensor.dim() in (2, 3):
            axes[name][1] = "length"
    for i, out in enumerate(outputs):
        axes[f"output_{i}"] = {d: f"output_{i}_axis_{d}" for d in range(out.dim())}
    return axes


def _other_shapes(tensors) -> list[list[torch.Tensor]]:
    """The traced inputs at other batch sizes and lengths: rows repeated or dropped,
    positions cut to two thirds and to an odd third (right padding stays right padding),
    and positions repeated in front to four thirds and to three times the length."""
    lengths = {t.shape[1] for t in tensors if t.dim() in (2, 3)}
    out = []
    for kind in ("shorter", "longer", "odd", "three times"):
        moved = []
        for tensor in tensors:
            if not tensor.dim():
                moved.append(tensor)
                continue
            rows = tensor.shape[0]
            picked = tensor[torch.arange(rows + 1 if rows < 3 else rows - 1) % rows]
            if tensor.dim() in (2, 3) and lengths:
                length = min(lengths)
                if kind == "shorter":
                    picked = picked[:, :max(1, (2 * length) // 3)]
                elif kind == "odd":  # a third, made odd: no power of two divides it
                    picked = picked[:, :max(1, (length // 3) | 1)]
                elif kind == "longer":  # the first third again, in front
                    picked = torch.cat([picked[:, :max(1, length // 3)], picked], dim=1)
                else:  # the whole sequence twice more, in front (several chunks of a
                    # chunk form; torch refuses it where it passes the positions)
                    picked = torch.cat([picked[:, :length], picked[:, :length], picked], dim=1)
            moved.append(picked.contiguous())
        out.append(moved)
    return out


def _error(reference: list, produced: list) -> float:
    worst = 0.0
    for ref, got in zip(reference, produced):
        ref = ref.detach().float().cpu().numpy()
        if ref.shape != got.shape:
            return float("inf")
        scale = float(np.nanmax(np.abs(ref))) if ref.size else 1.0
        diff = np.abs(got.astype(np.float64) - ref)
        if np.isnan(diff).any() and not np.array_equal(np.isnan(got), np.isnan(ref)):
            return float("inf")
        worst = max(worst, float(np.nanmax(diff)) / max(scale, 1e-12) if diff.size else 0.0)
    return worst


def session(graph: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of ``graph`` with ``threads`` intra-op threads (default:
    torch's, so the two are timed on the same cores). Its idle threads sleep rather than
    spin: spinning ones took the cores from the torch calls timed beside it (a torch
    baseline ran 2x slower next to a two-thread session, inflating the speed-ups). ONNX
    Runtime's fusion of a residual add into the layer norm after it is left out: its fused
    CPU kernel took 7x a plain layer norm's time a node (MiniLM's int8 graph: 13.99 ms with
    it, 12.84 without, at 128 tokens and one thread)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4  # a failing run raises with the message
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["SkipLayerNormFusion"])


@contextlib.contextmanager
def _quiet_trace():
    """torch's tracer warns of every Python-level use of a tensor's value or shape, and
    its C++ side prints the whole graph when an operator has no ONNX form; the check
    against another shape tells whether those uses matter, the error says which operator."""
    register_forms()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _parallel_capable(model: nn.Module) -> list:
    """The arena mixers (and a pretrained decoder's cores) in ``model`` that run a form
    other than parallel and have one."""
    return [m for m in model.modules()
            if getattr(m, "form", None) not in (None, "parallel")
            and "parallel" in (getattr(m, "forms", None)
                               or getattr(getattr(m, "info", None), "forms", ()))]


@contextlib.contextmanager
def parallel_forms(model: nn.Module):
    """Every arena mixer that has a parallel form runs in it for the duration: a chunk
    form's loop over chunks would be unrolled at the traced length; the parallel form has
    none (the same outputs, quadratic in the length)."""
    changed = [(m, m.form) for m in _parallel_capable(model)]
    for module, _ in changed:
        module.form = "parallel"
    try:
        yield
    finally:
        for module, form in changed:
            module.form = form


def export_onnx(model: nn.Module, call, *, name: str = "the model") -> "OrtModel":
    """The forward of ``model`` as an ONNX graph (traced from the call ``call(model)``
    makes), checked in ONNX Runtime against the torch model at the traced shape and at four
    other batch sizes and lengths (largest error relative to the output's scale at most
    ``TOLERANCE``); a ValueError naming ``name`` and the reason when the export fails or
    the graph does not match. Mixers with a parallel form are traced in it first (no loop
    over chunks to unroll); when that graph fails, in the forms the model has."""
    onnxruntime()
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("ONNX Runtime methods run on the CPU: compress with --device cpu")
    low = {p.dtype for p in model.parameters()} & {torch.bfloat16, torch.float16}
    if low:
        raise ValueError(f"{name} holds {', '.join(sorted(str(d) for d in low))} weights; "
                         "export a float32 model (ONNX Runtime's int8 methods start from one)")
    was_training = model.training
    model.eval()
    try:
        args, kwargs, output = capture_call(model, call)
        signature, tensors = _signature(args, kwargs, output)
        flat = _Flat(model, signature)
        shapes, references = [], []
        with torch.no_grad():
            # the references first: some models (transformers' BERT) compute differently in
            # calls right after a trace. A shape the torch model itself refuses (longer
            # than its positions) is not checked.
            for inputs in [tensors, *_other_shapes(tensors)]:
                try:
                    references.append(flat(*inputs))
                except (ValueError, IndexError, RuntimeError):
                    if inputs is tensors:
                        raise
                    continue
                shapes.append(inputs)
            parallel = bool(_parallel_capable(model))
            for attempt in ((True, False) if parallel else (False,)):
                try:
                    return _export_checked(model, flat, signature, tensors, shapes,
                                           references, name, attempt)
                except ValueError:
                    if attempt and parallel:
                        continue  # the parallel forms' graph failed: the model's own forms
                    raise
    finally:
        model.train(was_training)


def _export_checked(model, flat, signature, tensors, shapes, references, name,
                    parallel: bool) -> "OrtModel":
    """One trace and its check at every shape of ``shapes``."""
    buffer = io.BytesIO()
    outputs = references[0]
    try:
        with _quiet_trace(), (parallel_forms(model) if parallel else contextlib.nullcontext()):
            torch.onnx.export(
                flat, tuple(tensors), buffer, input_names=signature.inputs,
                output_names=[f"output_{i}" for i in range(len(outputs))],
                dynamic_axes=_dynamic_axes(signature, tensors, outputs),
                opset_version=OPSET, dynamo=False, do_constant_folding=True)
    except Exception as error:  # torch's exporter raises many kinds
        raise ValueError(f"{name} cannot be exported to ONNX: {_first_line(error)}") from None
    exported = OrtModel(buffer.getvalue(), signature, config=getattr(model, "config", None))
    for inputs, reference in zip(shapes, references):
        try:
            produced = exported.session.run(
                None, {n: t.numpy() for n, t in zip(signature.inputs, inputs)})
        except Exception as error:  # onnxruntime's own exception types
            raise ValueError(f"{name} exports to ONNX, but ONNX Runtime cannot run the graph "
                             f"at shape {_shapes(inputs)}: {_first_line(error)}") from None
        worst = _error(reference, produced)
        if not worst <= TOLERANCE:
            where = (f"at the traced shape {_shapes(tensors)}" if inputs is tensors
                     else f"at shape {_shapes(inputs)}, traced at {_shapes(tensors)}")
            raise ValueError(
                f"{name} exports to ONNX, but the graph does not reproduce the model (largest "
                f"error {worst:.2g} of the output's scale, over {TOLERANCE:g}) {where}")
    return exported


def _shapes(tensors) -> str:
    return ", ".join("x".join(map(str, t.shape)) for t in tensors)


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


# -- the model in ONNX Runtime ------------------------------------------------------------

class OrtModel(nn.Module):
    """An ONNX graph in an ONNX Runtime CPU session, called like the torch model it was
    exported from (``signature``). ``graph`` is the serialized ONNX model; ``config`` the
    exported model's own (a transformers model's configuration), when it had one."""

    backend = "onnxruntime"

    def __init__(self, graph: bytes, signature: Signature, threads: int | None = None,
                 config=None):
        super().__init__()
        self.graph, self.signature, self.threads = graph, signature, threads
        self.config = config
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = session(self.graph, self.threads)
        return self._session

    @property
    def runtime(self) -> str:
        return f"onnxruntime {onnxruntime().__version__}"

    def forward(self, *args, **kwargs):
        feeds = self.signature.feeds(args, kwargs)
        try:
            outputs = self.session.run(None, feeds)
        except Exception as error:  # onnxruntime's own exception types
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise ValueError(f"ONNX Runtime cannot run this graph on {shapes}: "
                             f"{_first_line(error)}") from None
        return self.signature.rebuild(outputs)

    def __deepcopy__(self, memo):
        return OrtModel(self.graph, copy.deepcopy(self.signature), self.threads,
                        self.config).train(self.training)

    def __getstate__(self):
        return {**self.__dict__, "_session": None}

    def graph_bytes(self) -> int:
        return len(self.graph)

    def weights(self) -> dict[str, np.ndarray]:
        """The graph's stored tensors (its initializers) by name."""
        import onnx
        from onnx import numpy_helper

        proto = onnx.load_from_string(self.graph)
        return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def operators(self) -> dict[str, int]:
        """How many nodes of each operator the graph has."""
        import onnx

        counts: dict[str, int] = {}
        for node in onnx.load_from_string(self.graph).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    def save(self, folder) -> None:
        import json

        folder = Path(folder)
        (folder / MODEL_FILE).write_bytes(self.graph)
        (folder / SIGNATURE_FILE).write_text(json.dumps(self.signature.to_dict(), indent=2))

    @classmethod
    def load(cls, folder, threads: int | None = None) -> "OrtModel":
        import json

        folder = Path(folder)
        try:
            graph = (folder / MODEL_FILE).read_bytes()
            saved = json.loads((folder / SIGNATURE_FILE).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"no ONNX model in {folder}: {error}") from None
        return cls(graph, Signature.from_dict(saved), threads).eval()


@register_subject
class GraphSubject(Subject):
    """An ``OrtModel`` as a subject: no blocks a method could act on (an ONNX Runtime
    method ends a recipe), only the output of what it returns."""

    kind = "ONNX Runtime graph"

    @classmethod
    def accepts(cls, model) -> bool:
        return isinstance(model, OrtModel)

    def blocks(self) -> list:
        return []

    def output(self, result) -> torch.Tensor:
        if isinstance(result, tuple):
            return result[0]
        return result.last_hidden_state if hasattr(result, "last_hidden_state") else result


def is_onnx_folder(folder) -> bool:
    return (Path(folder) / MODEL_FILE).is_file()


# -- compression methods ------------------------------------------------------------------

@dataclass
class OrtConfig:
    """The float32 graph in ONNX Runtime."""


@dataclass
class OrtInt8Config:
    """int8 weights, one scale per output channel (``per_channel``), activations
    quantized to int8 at run time (ONNX Runtime's dynamic quantization)."""
    per_channel: bool = True

    def __post_init__(self):
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be true or false, got {self.per_channel!r}")


@dataclass
class OrtInt8StaticConfig(OrtInt8Config):
    """int8 weights per channel and uint8 activations with ranges calibrated (min-max) on
    the task's calibration batches; QDQ graph."""


def _export_subject(subject, data):
    def call(model):
        return data.loss(model, data.calibration[0])

    mechanism = getattr(subject, "run", None) or {}
    name = f"a model of {mechanism['mixer']}" if "mixer" in mechanism else "the model"
    return export_onnx(subject.model, call, name=name)


def _report(model: OrtModel, method: str) -> dict:
    ops = model.operators()
    float_products = len(weight_products(model.graph))
    return {"backend": model.backend, "runtime": model.runtime, "opset": OPSET,
            "graph_method": method, "operators": ops,
            "int8_nodes": sum(ops.get(op, 0) for op in (
                "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm",
                "DequantizeLinear")),
            "float_weight_products": float_products}


def weight_products(graph: bytes) -> list[str]:
    """Names of the graph's matrix products by a stored weight (the model's linear layers):
    what the int8 methods quantize. Products of two activations (attention's scores, a
    recurrent state's read-out) stay float, as torch's dynamic quantization leaves them."""
    import onnx

    proto = onnx.load_from_string(graph)
    stored = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type in ("MatMul", "Gemm") and any(i in stored for i in n.input[1:2])]


def _to_quantize(graph: bytes) -> list[str]:
    """``weight_products`` as ONNX Runtime's quantizers name them: they turn a Gemm into a
    MatMul named ``<gemm>_MatMul`` (and an Add) before choosing nodes."""
    names = weight_products(graph)
    return names + [f"{name}_MatMul" for name in names]


def quantized_graph(graph: bytes, quantize) -> bytes:
    """``quantize(input path, output path)`` run on the graph in a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
        source.write_bytes(graph)
        # its advice to pre-process the graph first goes to the root logger
        logging.disable(logging.WARNING)
        try:
            with _quiet_trace():
                quantize(str(source), str(target))
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()


def int8_dynamic(graph: bytes, per_channel: bool = True) -> bytes:
    """The graph with its weight products in int8 (``quantize_dynamic``: QInt8 weights,
    per output channel by default; activations quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return quantized_graph(graph, lambda a, b: quantize_dynamic(
        a, b, per_channel=per_channel, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=_to_quantize(graph)))


def _quantized(exported: OrtModel, quantize) -> OrtModel:
    return OrtModel(quantized_graph(exported.graph, quantize), exported.signature,
                    exported.threads, exported.config)


def _finish(subject, model: OrtModel, method: str):
    return subject.with_model(model), _report(model, method)


@register_method("ort", OrtConfig, family="ONNX Runtime",
                 paper="ONNX Runtime (Microsoft, 2018-): the model's graph in ONNX Runtime",
                 check=lambda s, c: onnxruntime(), final=True)
def ort_float(subject, config, data):
    return _finish(subject, _export_subject(subject, data), "float32")


@register_method("ort_int8", OrtInt8Config, family="ONNX Runtime",
                 paper="ONNX Runtime quantize_dynamic; Jacob et al. 2018, Quantization and "
                       "Training of Neural Networks for Efficient Integer-Arithmetic-Only "
                       "Inference", check=lambda s, c: onnxruntime(), final=True)
def ort_int8(subject, config, data):
    exported = _export_subject(subject, data)
    model = OrtModel(int8_dynamic(exported.graph, config.per_channel), exported.signature,
                     exported.threads, exported.config)
    return _finish(subject, model, "int8 dynamic")


@register_method("ort_int8_static", OrtInt8StaticConfig, family="ONNX Runtime",
                 paper="ONNX Runtime quantize_static (QDQ, min-max calibration); Jacob et al. "
                       "2018", check=lambda s, c: onnxruntime(), final=True)
def ort_int8_static(subject, config, data):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    exported = _export_subject(subject, data)
    feeds = []
    for batch in data.calibration:
        args, kwargs, _ = capture_call(subject.model, lambda m, b=batch: data.loss(m, b))
        feeds.append(exported.signature.feeds(args, kwargs))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = iter(feeds)

        def get_next(self):
            return next(self.left, None)

    model = _quantized(exported, lambda a, b: quantize_static(
        a, b, Reader(), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=_to_quantize(exported.graph)))
    return _finish(subject, model, "int8 static")
