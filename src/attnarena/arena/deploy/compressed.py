"""Compressed models on disk: ``model.safetensors`` (torchao's quantized tensors flattened
into their parts) and ``compressed.json`` (the source, the recipe and what each step did),
and how their size is counted."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from attnarena.arena.run.checkpoint import untie
from attnarena.extras import quiet_imports


# -- saving -------------------------------------------------------------------------------

ROOT = "model."  # torchao's flattening needs a module path in front of every name


def _flatten(model) -> tuple[dict, dict]:
    """(tensors, metadata) safetensors can hold, torchao's quantized tensors flattened into
    their parts (their names then start with ``ROOT``)."""
    state = untie({k: v for k, v in model.state_dict().items()})
    if all(type(v) is torch.Tensor for v in state.values()):
        return state, {}
    from attnarena.compress.quantize import torchao

    torchao()
    with quiet_imports():
        from torchao.prototype.safetensors.safetensors_support import (
            flatten_tensor_state_dict)

    return flatten_tensor_state_dict({ROOT + k: v for k, v in state.items()})


def _graph(model):
    """The ``OrtModel`` when ``model`` is an ONNX Runtime graph, else None."""
    from attnarena.compress.ort import OrtModel

    return model if isinstance(model, OrtModel) else None


def backend(model) -> dict:
    """{"backend", "runtime"} of a model: torch and its version and dtype, or ONNX Runtime."""
    if _graph(model):
        return {"backend": "onnxruntime", "runtime": model.runtime}
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "mixed"
    return {"backend": "torch", "runtime": f"torch {torch.__version__.split('+')[0]} {dtype}"}


def stored_bytes(model) -> int:
    """Size of the model's weights as ``save_compressed`` writes them (of an ONNX graph,
    the graph's file)."""
    if _graph(model):
        return model.graph_bytes()
    tensors, metadata = _flatten(model)
    return len(save(tensors, metadata=metadata or None))


def linear_bytes(model) -> int:
    """Bytes of the linear layers' tensors as saved: the part of the model the methods
    compress (embeddings, norms and the like are the rest)."""
    from attnarena.compress.fakequant import QuantLinear

    if _graph(model):  # the tensors the graph's matrix products read
        return _graph_linear_bytes(model)
    names = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))}
    tensors, metadata = _flatten(model)
    skip = len(ROOT) if metadata else 0
    return sum(t.numel() * t.element_size() for k, t in tensors.items()
               if k[skip:].rsplit(".", 1)[0] in names)


def _graph_linear_bytes(model) -> int:
    import onnx

    weights = model.weights()
    read = set()
    for node in onnx.load_from_string(model.graph).graph.node:
        if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul",
                            "QLinearMatMul", "DequantizeLinear"):
            read.update(i for i in node.input if i in weights)
    return sum(weights[n].nbytes for n in read)


def weight_count(model) -> int:
    """Parameters and persistent buffers the model computes with (quantized weights
    counted by their number of values, not their bytes; of an ONNX graph, the values of its
    stored tensors but scales and zero points)."""
    if _graph(model):
        return sum(int(w.size) for n, w in model.weights().items()
                   if not n.endswith(("_scale", "_zero_point")))
    count = 0
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + [
                (n, b) for n, b in module.named_buffers(recurse=False)
                if b is not None and n not in module._non_persistent_buffers_set]:
            if name == "codes":
                count += module.in_features * module.out_features
            elif name in ("scale", "act_scale"):
                continue
            else:
                count += tensor.numel()
    return count


def save_compressed(folder, model, resolved: dict, steps: list, reports: list,
                    row: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``compressed.json`` (the source run's config, the
    recipe and what each step did), whole or not at all."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        if _graph(model):
            model.save(tmp)
        else:
            tensors, metadata = _flatten(model)
            save_file(tensors, str(tmp / "model.safetensors"), metadata=metadata or None)
        (tmp / "compressed.json").write_text(json.dumps(
            {"config": resolved, "recipe": [s.to_dict() for s in steps], "reports": reports,
             "row": row}, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def compressed_record(folder) -> dict:
    """What ``save_compressed`` wrote beside the weights: {"config": the source's config,
    "recipe": [step, ...], "reports": [what each step did], "row": the stored row}."""
    folder = Path(folder)
    try:
        saved = json.loads((folder / "compressed.json").read_text())
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"no compressed model in {folder}: "
                         f"{error or type(error).__name__}") from None
    _check_saved(saved, folder / "compressed.json")
    return saved


def load_compressed(folder, device="cpu") -> torch.nn.Module:
    """A model saved by ``attnarena compress`` (its folder), in eval mode (a pretrained
    source gives back its ``PretrainedEncoder``); ``compressed_record`` says what was
    done to it. A recipe that ended in ONNX Runtime gives an ``OrtModel``: the graph in an
    ``InferenceSession``, called as the torch model was (CPU only)."""
    from attnarena.arena.run.artifacts import build_run_model
    from attnarena.compress.ort import OrtModel, is_onnx_folder
    from attnarena.compress.recipe import recipe_from_dicts, restore_recipe

    saved = compressed_record(folder)
    if is_onnx_folder(folder):
        if torch.device(device).type != "cpu":
            raise ValueError(f"{folder} holds an ONNX Runtime graph, which runs on the CPU: "
                             "load it with device='cpu'")
        graph = OrtModel.load(folder)
        if "pretrained" not in saved["config"]:
            return graph
        from attnarena.pretrained import load_pretrained

        encoder = load_pretrained(saved["config"]["pretrained"])
        graph.config = encoder.model.config
        return encoder.with_model(graph).eval()
    if "pretrained" in saved["config"]:
        return _load_pretrained(saved, folder, device)
    steps = recipe_from_dicts(saved["recipe"])
    reports = saved["reports"]
    resolved = saved["config"]
    start = 0
    for index, report in enumerate(reports):
        if "student" in report:  # a new student: its own architecture, later steps on it
            resolved, start = report["student"], index + 1
    model = build_run_model(resolved)
    model = restore_recipe(model, steps[start:], reports[start:])
    load_state(model, folder)
    return model.to(device).eval()


def compressed_model(folder, device="cpu") -> torch.nn.Module:
    """The ``nn.Module`` a compression acted on, loaded from its folder (of a pretrained
    source, the transformers model inside the encoder)."""
    loaded = load_compressed(folder, device)
    return loaded.model if "pretrained" in compressed_record(folder)["config"] else loaded


def _check_saved(saved, where) -> None:
    """What ``save_compressed`` writes: a source config, a recipe and one report a step."""
    from attnarena.arena.run.config import check_resolved

    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ValueError(f"{where}: expected an object with the source run's config, got "
                         f"{str(saved)[:80]}")
    recipe, reports = saved.get("recipe"), saved.get("reports")
    if not isinstance(recipe, list) or not isinstance(reports, list) \
            or len(recipe) != len(reports) or not all(isinstance(r, dict) for r in reports):
        raise ValueError(f"{where}: expected a recipe and one report per step")
    if "pretrained" in saved["config"]:
        if not isinstance(saved["config"]["pretrained"], str):
            raise ValueError(f"{where}: config.pretrained must name a model or folder")
    else:
        check_resolved(saved["config"], f"{where} (config)")
    for report in reports:
        if "student" in report:
            check_resolved(report["student"], f"{where} (a distilled student's config)")


def load_state(model, folder) -> None:
    """Load ``model.safetensors`` of ``folder`` into ``model`` (quantized tensors rebuilt
    from their parts), replacing its tensors."""
    path = str(Path(folder) / "model.safetensors")
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(path)
    if "tensor_names" in metadata:  # torchao's tensors, flattened
        from attnarena.compress.quantize import torchao

        torchao()
        with quiet_imports():
            from torchao.prototype.safetensors.safetensors_support import (
                unflatten_tensor_state_dict)

        tensors, leftover = unflatten_tensor_state_dict(tensors, metadata)
        tensors = {k[len(ROOT):]: v for k, v in {**tensors, **leftover}.items()}
    try:
        model.load_state_dict(tensors, assign=True)
    except RuntimeError as error:  # torch's message: a heading, then a line per mismatch
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise ValueError(f"the weights in {path} do not fit the recorded model: "
                         f"{detail}") from None


def _load_pretrained(saved: dict, folder, device="cpu"):
    """The encoder ``save_compressed`` wrote for a pretrained source."""
    from attnarena.compress.recipe import recipe_from_dicts, restore_recipe
    from attnarena.pretrained import load_pretrained

    encoder = load_pretrained(saved["config"]["pretrained"])
    steps = recipe_from_dicts(saved["recipe"])
    encoder.model = restore_recipe(encoder.model, steps, saved["reports"])
    load_state(encoder.model, folder)
    return encoder.to(device).eval()


def report_summary(report: dict) -> dict:
    """What a step's report says that a reader of the row needs (not its raw scores)."""
    keep = ("quantized", "kept_float", "not_pruned", "mean_bits", "heads_before", "heads_after",
            "neurons_before", "neurons_after", "ranks", "weights_before", "weights_after",
            "sparsity", "folded", "not_folded", "first", "last", "student", "backend",
            "runtime", "dtype", "int8_nodes", "graph_method")
    return {k: v for k, v in report.items() if k in keep}
