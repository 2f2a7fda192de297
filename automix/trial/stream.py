"""Load a model without its full-precision linear weights: they stay in the safetensors file.

A trial quantizes most of its linear layers; loading them all in full precision first (what
``from_pretrained`` does) makes the load the largest moment of the trial. :func:`load_streamed`
builds the model on the meta device, loads every tensor that is not a decoder linear weight
(embeddings, norms, LM head, rotary tables) and puts a :class:`StreamedLinear` in place of each
target linear layer. A ``StreamedLinear`` reads its weight from the file each time
the weight is asked for (``.weight``, a forward) and keeps nothing: a method that quantizes the
layer reads it once, replaces the module, and the full-precision weight is gone; a calibration
forward holds one layer's weight at a time. :func:`materialize` turns the layers that stay dense
into ordinary ``nn.Linear`` (or GPT-2 ``Conv1D``) layers with their own tensors.

The streamed model computes exactly what ``from_pretrained`` gives (the same bytes, converted to
the model dtype the same way; ``tests/trial/test_stream.py``). Weights that are not in
safetensors files (``.bin`` checkpoints), or whose names do not match the model's, are not
streamed: :func:`load_streamed` returns None and the caller loads the model whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from automix.arch import is_transposed, target_layer_names

__all__ = ["StreamedLinear", "WeightSource", "load_streamed", "materialize", "streamed_layers"]


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class WeightSource:
    """The tensors of a ``save_pretrained`` directory's safetensors file(s), each read on demand
    straight from the file into a new tensor (``readinto``: no mapping of the file, no copy of
    it, nothing held between reads)."""

    def __init__(self, entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int, int]]) -> None:
        self._entries = entries  # key -> (file, dtype, shape, start, end) of its bytes in the file

    @classmethod
    def of(cls, model_dir: Path) -> "WeightSource | None":
        """The source of a directory's weights, None when they are not all in safetensors files
        (or use a dtype this reader does not know)."""
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({model_dir / f for f in (json.loads(index.read_text()).get("weight_map") or {}).values()})
        else:
            files = [model_dir / "model.safetensors"]
        if not files or not all(p.is_file() for p in files):
            return None
        entries = {}
        for path in files:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if info["dtype"] not in _DTYPES:
                    return None
                begin, end = info["data_offsets"]
                entries[key] = (path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + begin, 8 + n + end)
        return cls(entries) if entries else None

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> Iterable[str]:
        return self._entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][2]

    def get(self, key: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """A new tensor holding ``key`` (converted to ``dtype`` and moved to ``device`` when given)."""
        return self.get_rows(key, 0, None, dtype, device)

    def get_rows(self, key: str, start: int, end: int | None, dtype: torch.dtype | None = None,
                 device: str | torch.device = "cpu") -> torch.Tensor:
        """Rows ``start:end`` (first dimension) of ``key`` as a new tensor in ``dtype`` on
        ``device``. A conversion or a move goes through the file :data:`READ_CHUNK` bytes at a
        time, so nothing but the result is ever whole in memory."""
        path, stored, shape, begin, finish = self._entries[key]
        n = shape[0] if shape else 1
        end = n if end is None else end
        row = (finish - begin) // max(1, n)  # bytes per row
        out_shape = (end - start, *shape[1:]) if shape else ()
        want = stored if dtype is None or not stored.is_floating_point else dtype
        out = torch.empty(out_shape, dtype=want, device=device)
        direct = want == stored and out.device.type == "cpu"
        step = (end - start) if direct else max(1, READ_CHUNK // max(1, row))
        with open(path, "rb") as f:
            for r0 in range(start, end, step):
                r1 = min(end, r0 + step)
                part = out[r0 - start:r1 - start] if direct else torch.empty((r1 - r0, *shape[1:]), dtype=stored)
                f.seek(begin + r0 * row)
                if part.numel() and f.readinto(memoryview(part.reshape(-1).view(torch.uint8).numpy())) != (r1 - r0) * row:
                    raise OSError(f"{path}: short read of {key}")
                if not direct:
                    out[r0 - start:r1 - start] = part
        return out


    def get_runs(self, key: str, rows: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The rows ``rows`` (ascending indices) of ``key``, read run by run of consecutive ones."""
        parts, start = [], 0
        idx = rows.tolist()
        for i in range(1, len(idx) + 1):
            if i == len(idx) or idx[i] != idx[i - 1] + 1:
                parts.append(self.get_rows(key, idx[start], idx[i - 1] + 1, dtype))
                start = i
        return torch.cat(parts) if len(parts) > 1 else parts[0]


READ_CHUNK = 1 << 20  # bytes read at a time when a tensor is converted or moved on its way in


class StreamedLinear(nn.Module):
    """A frozen target linear layer whose tensors stay in the file: ``weight`` ([out, in], the
    model dtype) and ``bias`` are read on every access; it owns no parameters. ``forward`` is the
    layer's (``x @ W.T + b``); :meth:`materialize` gives the ordinary layer back."""

    def __init__(self, source: WeightSource, prefix: str, out_features: int, in_features: int, bias: bool,
                 transposed: bool, dtype: torch.dtype, device: str | torch.device) -> None:
        super().__init__()
        self.source, self.prefix = source, prefix
        self.out_features, self.in_features = out_features, in_features
        self.has_bias, self.transposed = bias, transposed
        self.dtype, self.device = dtype, torch.device(device)
        self.rows: torch.Tensor | None = None  # kept output rows / input columns (structured pruning)
        self.cols: torch.Tensor | None = None

    def select(self, index: torch.Tensor, dim: int) -> None:
        """Keep only the output rows (``dim`` 0) or input columns (1) ``index`` of this layer,
        as structured pruning slices a layer: applied whenever the weight is read."""
        index = index.detach().to("cpu", torch.long)
        if dim == 0:
            self.rows = index if self.rows is None else self.rows[index]
            self.out_features = len(index)
        else:
            self.cols = index if self.cols is None else self.cols[index]
            self.in_features = len(index)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_rows(0, self.out_features)

    def weight_rows(self, start: int, end: int) -> torch.Tensor:
        """Output rows ``start:end`` of the (out, in) weight (after :meth:`select`), read alone."""
        key = self.prefix + "weight"
        if self.transposed:  # GPT-2 stores (in, out): the layer's rows are the file's columns
            w = self.source.get(key, self.dtype).t()
        elif self.rows is None:
            w = self.source.get_rows(key, start, end, self.dtype)
            start, end = 0, end - start
        else:  # the kept rows, read run by run of consecutive ones
            w = self.source.get_runs(key, self.rows[start:end], self.dtype)
            start, end = 0, end - start
        if self.transposed and self.rows is not None:
            w = w.index_select(0, self.rows)
        if self.cols is not None:
            w = w.index_select(1, self.cols)
        return w[start:end].contiguous().to(self.device)

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        if not self.has_bias:
            return None
        b = self.source.get(self.prefix + "bias", self.dtype)
        return (b if self.rows is None else b.index_select(0, self.rows)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def materialize(self) -> nn.Module:
        """The layer with its own tensors: ``nn.Linear``, or ``Conv1D`` for GPT-2's layers."""
        with torch.device("meta"):
            layer = Conv1D(self.out_features, self.in_features) if self.transposed else \
                nn.Linear(self.in_features, self.out_features, bias=self.has_bias)
        if self.transposed and self.rows is None and self.cols is None:
            weight = self.source.get(self.prefix + "weight", self.dtype, self.device)
        else:
            weight = self.weight
            weight = weight.t().contiguous() if self.transposed else weight
        layer.weight = nn.Parameter(weight)
        if self.has_bias:
            layer.bias = nn.Parameter(self.bias)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, streamed"


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def load_streamed(model_dir: Path, config: Any, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> nn.Module | None:
    """``model_dir``'s causal LM with every target linear a :class:`StreamedLinear` and every
    other tensor loaded (tied weights tied as the model ties them), in eval mode; None when the
    weights are not all in safetensors files under the model's own names."""
    source = WeightSource.of(model_dir)
    if source is None:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    targets = target_layer_names(model)
    for name in targets:
        layer = model.get_submodule(name)
        keys = [f"{name}.{p}" for p, _ in layer.named_parameters()]
        if not all(k in source for k in keys):
            return None
        out_f, in_f = (layer.nf, layer.weight.shape[0]) if is_transposed(layer) else \
            (layer.out_features, layer.in_features)
        _set_module(model, name, StreamedLinear(source, name + ".", out_f, in_f, f"{name}.bias" in keys,
                                                is_transposed(layer), dtype, device))
    loaded: dict[int, nn.Parameter] = {}  # tied parameters are one object in several modules
    persistent = set(model.state_dict(keep_vars=True))
    fresh: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        prefix = mod_name + "." if mod_name else ""
        for p_name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in loaded:
                key = prefix + p_name
                if key not in source:
                    tied = _tied_source(model, key, source)
                    if tied is None:
                        return None
                    key = tied
                loaded[id(p)] = nn.Parameter(source.get(key, dtype if p.is_floating_point() else None, device),
                                             requires_grad=p.requires_grad)
            module.register_parameter(p_name, loaded[id(p)])
        for b_name, b in list(module.named_buffers(recurse=False)):
            key = prefix + b_name
            if key in persistent and key in source:
                module.register_buffer(b_name, source.get(key, b.dtype, device))
            else:
                fresh[mod_name] = module
    for mod_name, module in fresh.items():  # buffers computed at construction (rotary tables): built again
        try:
            with torch.device(device):
                built = type(module)(config=model.config)
        except TypeError:
            return None
        for b_name, b in built.named_buffers(recurse=False):
            module.register_buffer(b_name, b, persistent=prefix_key(mod_name, b_name) in persistent)
    return model.eval()


def prefix_key(module_name: str, name: str) -> str:
    return f"{module_name}.{name}" if module_name else name


def _tied_source(model: nn.Module, key: str, source: WeightSource) -> str | None:
    """The file key of a parameter the checkpoint stores under a tied name (the LM head saved
    as the input embedding, or the other way round), None when it is not tied."""
    try:
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if head is None or head.weight is not emb.weight:
        return None
    for name, module in model.named_modules():
        if module is emb and f"{name}.weight" in source:
            return f"{name}.weight"
        if module is head and f"{name}.weight" in source:
            return f"{name}.weight"
    return None


def streamed_layers(model: nn.Module) -> dict[str, StreamedLinear]:
    """The layers of ``model`` still streamed from the file, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, StreamedLinear)}


def materialize(model: nn.Module, names: Iterable[str] | None = None) -> int:
    """Replace the streamed layers (all of them, or those of ``names``) by ordinary frozen
    layers with their own tensors; returns how many were replaced."""
    todo = streamed_layers(model)
    if names is not None:
        wanted = set(names)
        todo = {n: m for n, m in todo.items() if n in wanted}
    for name, layer in todo.items():
        real = layer.materialize()
        real.requires_grad_(False)
        _set_module(model, name, real)
    return len(todo)
