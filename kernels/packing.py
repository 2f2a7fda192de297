"""Bit-packing of quantized integer codes into int32 words.

Layout (the contract between the quantizers in ``automix.quant`` and the Triton kernels here): a code matrix ``q`` of shape
``(K, N)`` — K is the reduction (input-feature) axis, N the output features — is packed along
K as a *bitstream* per column. Code ``k`` of a column starts at bit ``k * bits`` of the stream;
bit ``j`` of the stream lives in word ``j // 32`` at position ``j % 32``. Words are stored as
``packed[word, n]`` (shape ``(n_words, N)``) so that a kernel loading a tile of words across N
reads contiguous memory. Codes are grouped into blocks of 32 values, which occupy exactly
``bits`` words, so 3-bit codes spend 3 words on 32 values and two codes per block straddle a
word boundary (no wasted bits). A kernel unpacks code ``k`` with
``(word[(k*b) >> 5] >> ((k*b) & 31)) | (word[((k*b) >> 5) + 1] << (32 - (k*b) & 31))``,
the second term only when the code straddles (only possible for 3 bits).

K need not be a multiple of 32: the last block is padded with zero codes.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (2, 3, 4, 8)
_BLOCK = 32  # codes per block; a block occupies exactly `bits` int32 words


def check_bits(bits: int) -> int:
    """Validate a bit width; 16 is the callers' 'keep unquantized' and not packable."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(
            f"bits must be one of {SUPPORTED_BITS} (16 means 'keep unquantized' and is handled "
            f"by callers), got {bits!r}"
        )
    return bits


def packed_words(k: int, bits: int) -> int:
    """Number of int32 words per column for `k` codes of `bits` bits."""
    return ((k + _BLOCK - 1) // _BLOCK) * bits


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret int64 values in [0, 2**32) as int32 (two's complement wrap)."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _block_layout(bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Word index and bit shift of each of the 32 codes of a block."""
    pos = torch.arange(_BLOCK, device=device, dtype=torch.int64) * bits
    return pos // 32, pos % 32


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``q`` (K, N) with values in [0, 2**bits) into int32 (n_words, N)."""
    check_bits(bits)
    if q.dim() != 2:
        raise ValueError(f"pack expects a 2-D code matrix (K, N), got shape {tuple(q.shape)}")
    k, n = q.shape
    q = q.to(torch.int64)
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing")
    n_blocks = (k + _BLOCK - 1) // _BLOCK
    pad = n_blocks * _BLOCK - k
    if pad:
        q = torch.cat([q, q.new_zeros(pad, n)], dim=0)
    q = q.view(n_blocks, _BLOCK, n)
    widx, shift = _block_layout(bits, q.device)
    shifted = q << shift.view(1, _BLOCK, 1)  # < 2**35, fits int64
    # low part into word widx, the bits beyond 32 (straddling codes) into word widx + 1
    words = q.new_zeros(n_blocks, bits + 1, n)
    index = widx.view(1, _BLOCK, 1).expand_as(q)
    words.scatter_add_(1, index, shifted & 0xFFFFFFFF)
    words.scatter_add_(1, index + 1, shifted >> 32)
    return _to_int32(words[:, :bits].reshape(n_blocks * bits, n))


def _segments(bits: int) -> list[tuple[int, int, int]]:
    """Decode plan of a 32-code block: (word, first code, count) runs inside one word, and
    (word, code, -1) for a code that straddles words ``word`` and ``word + 1``."""
    plan: list[tuple[int, int, int]] = []
    i = 0
    while i < _BLOCK:
        word, shift = divmod(i * bits, 32)
        if shift + bits > 32:
            plan.append((word, i, -1))
            i += 1
            continue
        j = i
        while j < _BLOCK and (j * bits) // 32 == word and (j * bits) % 32 + bits <= 32:
            j += 1
        plan.append((word, i, j - i))
        i = j
    return plan


def unpack_int32(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack` as int32 codes ``(k, N)`` (the fast path used by dequantization).

    Works in int32 throughout: after an arithmetic right shift the sign-extended high bits are
    cleared by the mask because a run never crosses bit 31.
    """
    check_bits(bits)
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ValueError(
            f"packed weights must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    n_words, n = packed.shape
    if n_words != packed_words(k, bits):
        raise ValueError(
            f"packed weights have {n_words} words per column, expected {packed_words(k, bits)} "
            f"for K={k} at {bits} bits"
        )
    n_blocks = n_words // bits
    mask = (1 << bits) - 1
    dev = packed.device
    if 32 % bits == 0:  # every word holds 32/bits whole codes: one broadcast shift
        per = 32 // bits
        shifts = torch.arange(per, device=dev, dtype=torch.int32) * bits
        codes = (packed.view(n_words, 1, n) >> shifts.view(1, per, 1)) & mask
        return codes.view(n_blocks * _BLOCK, n)[:k]
    words = packed.view(n_blocks, bits, n)
    pieces = []
    for word, first, count in _segments(bits):
        w = words[:, word:word + 1, :]
        if count > 0:
            shifts = torch.arange(first, first + count, device=dev, dtype=torch.int32) * bits % 32
            pieces.append((w >> shifts.view(1, count, 1)) & mask)
        else:  # straddling code: low bits at the top of `word`, the rest at the bottom of the next
            shift = (first * bits) % 32
            low = 32 - shift
            hi = (words[:, word + 1:word + 2, :] & ((1 << (bits - low)) - 1)) << low
            pieces.append(((w >> shift) & ((1 << low) - 1)) | hi)
    return torch.cat(pieces, dim=1).view(n_blocks * _BLOCK, n)[:k]


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack`: int32 words (n_words, N) -> codes (k, N) as uint8."""
    return unpack_int32(packed, bits, k).to(torch.uint8)
