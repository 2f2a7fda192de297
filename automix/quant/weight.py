"""`QuantizedWeight`: packed codes plus per-group scale and zero point of one linear weight.

Storage (the layout the kernels read, see :mod:`automix.kernels.packing`):

* ``packed``  int32 ``(n_words, N)`` — codes packed along K (input features);
* ``scales``  ``(G, N)`` and ``zeros`` ``(G, N)`` in ``meta_dtype`` (fp16 by default), where
  ``G = ceil(K / group_size)``; group ``g`` covers input features ``[g*gs, (g+1)*gs)``, the last
  group may be shorter when ``group_size`` does not divide K (no padding of the weight).

Dequantization is ``w[n, k] = (q[k, n] - zeros[k // gs, n]) * scales[k // gs, n]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from automix.kernels.packing import check_bits, packed_words, unpack
from automix.kernels.reference import dequantize_kn

_FORMAT = "automix.quantized_weight/1"
_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class QuantizedWeight:
    """A quantized ``(out_features, in_features)`` weight; immutable, cheap to move."""

    def __init__(
        self,
        packed: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bits: int,
        group_size: int,
        shape: tuple[int, int],
        dtype: torch.dtype = torch.float16,
    ) -> None:
        check_bits(bits)
        n, k = int(shape[0]), int(shape[1])
        n_groups = (k + group_size - 1) // group_size
        expect = {
            "packed": ((packed_words(k, bits), n), (torch.int32,)),
            "scales": ((n_groups, n), tuple(_DTYPES.values())),
            "zeros": ((n_groups, n), tuple(_DTYPES.values())),
        }
        for name, t in (("packed", packed), ("scales", scales), ("zeros", zeros)):
            want_shape, want_dtypes = expect[name]
            if tuple(t.shape) != want_shape or t.dtype not in want_dtypes:
                raise ValueError(
                    f"QuantizedWeight.{name}: expected shape {want_shape} and dtype in "
                    f"{[dtype_name(d) for d in want_dtypes]} for a {bits}-bit (out={n}, in={k}) "
                    f"weight with group_size={group_size}; got {tuple(t.shape)} {dtype_name(t.dtype)}"
                )
        self.packed = packed
        self.scales = scales
        self.zeros = zeros
        self.bits = bits
        self.group_size = int(group_size)
        self.shape = (n, k)
        self.dtype = dtype

    # ---------------------------------------------------------------- properties
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def num_groups(self) -> int:
        return self.scales.shape[0]

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Exact bytes held: packed codes + scales + zero points."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros))

    @property
    def bits_per_weight(self) -> float:
        """Average storage bits per weight including the per-group metadata."""
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    # ---------------------------------------------------------------- conversions
    def codes(self) -> torch.Tensor:
        """Integer codes ``(out_features, in_features)`` as uint8."""
        return unpack(self.packed, self.bits, self.shape[1]).t()

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dequantized weight ``(out_features, in_features)`` in ``dtype`` (default: original)."""
        w = dequantize_kn(
            self.packed, self.scales, self.zeros, self.bits, self.group_size, self.shape[1],
            dtype or self.dtype,
        )
        return w.t().contiguous()

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        """A copy on `device` (metadata dtype unchanged)."""
        return QuantizedWeight(
            self.packed.to(device), self.scales.to(device), self.zeros.to(device),
            self.bits, self.group_size, self.shape, self.dtype,
        )

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensors + JSON metadata)."""
        from safetensors.torch import save_file

        meta = {
            "format": _FORMAT,
            "bits": str(self.bits),
            "group_size": str(self.group_size),
            "shape": json.dumps(list(self.shape)),
            "dtype": dtype_name(self.dtype),
        }
        tensors = {
            "packed": self.packed.detach().cpu().contiguous(),
            "scales": self.scales.detach().cpu().contiguous(),
            "zeros": self.zeros.detach().cpu().contiguous(),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "QuantizedWeight":
        """Read a file written by :meth:`save`; malformed files raise ValueError naming the key."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such quantized weight file")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # safetensors raises several error types for corrupt files
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: metadata 'format' should be {_FORMAT!r}, got {meta.get('format')!r}")
        for key in ("packed", "scales", "zeros"):
            if key not in tensors:
                raise ValueError(f"{path}: missing tensor {key!r}")
        try:
            bits = int(meta["bits"])
            group_size = int(meta["group_size"])
            shape = tuple(json.loads(meta["shape"]))
            dtype = _DTYPES[meta["dtype"]]
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{path}: metadata needs bits, group_size, shape [out, in] and dtype in "
                f"{sorted(_DTYPES)} ({exc!r})"
            ) from exc
        try:
            return cls(tensors["packed"], tensors["scales"], tensors["zeros"], bits, group_size, shape, dtype)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"QuantizedWeight(shape={self.shape}, bits={self.bits}, group_size={self.group_size}, "
            f"dtype={dtype_name(self.dtype)}, nbytes={self.nbytes}, device={self.device})"
        )
