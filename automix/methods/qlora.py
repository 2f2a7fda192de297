"""``qlora``: the base quantized per layer (``automix.quant.QuantLinear``, bits < 16 from the
layer settings) with zero-initialised LoRA adapters on top (Dettmers et al., 2023, with our
round-to-nearest / HQQ formats instead of NF4).

The adapters start with ``B = 0``, so right after preparation the model computes exactly the
quantized base; at 2 bits that base is often broken, which is what LoftQ, QuAILoRA and ApiQ fix.
"""

from __future__ import annotations

from automix.methods.lora import LoRA


class QLoRA(LoRA):
    name = "qlora"
    quantize_base = True
