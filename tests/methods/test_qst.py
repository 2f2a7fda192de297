"""QST: frozen quantized backbone without autograd, trainable side network only."""

import pytest
import torch

from automix.methods.qst import QSTModel, side_dims, side_param_count
from tests.methods.helpers import check_method_end_to_end, prepare, tokens


def test_qst_method_end_to_end(tmp_path):
    # alpha starts at 1 (exactly the backbone), so the side network needs a few steps to engage
    check_method_end_to_end("qst", tmp_path, steps=12, lr=3e-2)


def test_starts_as_the_quantized_backbone_and_trains_only_the_side():
    method, model, _ = prepare("qst", bits=4)
    assert isinstance(model, QSTModel)
    batch = tokens(2, 16, 3)
    with torch.no_grad():
        backbone_logits = model.backbone(batch).logits
        logits = model(input_ids=batch).logits
    torch.testing.assert_close(logits, backbone_logits, atol=1e-5, rtol=1e-5)
    names = [n for n, _ in method.trainable_parameters(model)]
    assert names and not any(n.startswith("backbone.") for n in names)
    assert sum(p.numel() for _, p in method.trainable_parameters(model)) == side_param_count(64, 2, 4, 128)


def test_backbone_builds_no_autograd_graph():
    """No activation of the backbone is kept for backward: only side tensors are saved."""
    _, model, _ = prepare("qst", bits=4)
    batch = tokens(2, 16, 3)
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model._backbone_states(batch, None)
    assert saved == []


def test_side_dims_keep_at_least_one_head():
    assert side_dims(64, 4, 128, 16) == (4, 1, 8)
    assert side_dims(4096, 32, 11008, 16) == (256, 2, 688)
    with pytest.raises(ValueError):
        side_dims(64, 4, 128, 0)


def test_right_padding_is_respected_without_a_mask():
    _, model, _ = prepare("qst", bits=4)
    with torch.no_grad():
        model.out_gate.fill_(0.3)  # let the side network contribute
    batch = tokens(1, 12, 4)
    mask = torch.ones(1, 12, dtype=torch.long)
    with torch.no_grad():
        full = model(input_ids=batch, attention_mask=mask).logits
        pad, zeros = tokens(1, 4, 5), torch.zeros(1, 4, dtype=torch.long)
        padded = torch.cat([batch, pad], dim=1)
        pmask = torch.cat([mask, zeros], dim=1)
        part = model(input_ids=padded, attention_mask=pmask).logits[:, :12]
    torch.testing.assert_close(part, full, atol=1e-4, rtol=1e-4)


def test_qst_memory_prediction_matches_measurement():
    from tests.methods.helpers import check_memory_prediction

    check_memory_prediction("qst")


def test_qst_saves_far_less_than_qlora():
    from tests.methods.helpers import measure_vs_predict

    qst, _ = measure_vs_predict("qst")
    qlora, _ = measure_vs_predict("qlora")
    assert qst.optimizer_states + qst.activations < 0.5 * (qlora.optimizer_states + qlora.activations)


def test_only_non_right_padding_builds_a_mask():
    from automix.methods.qst import _right_padded

    assert _right_padded(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    assert not _right_padded(torch.tensor([[0, 1, 1, 1]]))
    assert not _right_padded(torch.tensor([[1, 0, 1, 0]]))
