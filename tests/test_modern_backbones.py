"""Every modern backbone end to end: one epoch of training, its run's checkpoint loaded back, and
an ONNX export whose logits match PyTorch's (slow: seconds to minutes per model on 2 cores;
the fast tier checks them on the meta device and with tiny inputs in tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch

from cnnlab import api
from cnnlab.models import list_models, model_info

pytest.importorskip("onnxruntime")

MODERN = [n for n in list_models() if model_info(n)["group"] == "modern"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODERN)
def test_trains_saves_loads_and_exports_with_parity(name, tmp_path):
    from cnnlab.export import export_model

    run = api.train(
        data="builtin:mnist-sample",
        model=name,
        shots=2,  # 2 images per class: one short epoch of 20 images
        epochs=1,
        batch_size=10,
        image_size=32,  # the small-input variant
        out=str(tmp_path),
        report=False,
        seed=0,
    )
    assert len(run.history) == 1 and torch.isfinite(torch.tensor(run.history[0]["train_loss"]))
    model, meta, _ = api.load_checkpoint_model(run.run_dir, "cpu")
    assert meta["model"] == name and model.default_cfg["small_input"] is True
    with torch.no_grad():
        assert model(torch.zeros(2, meta["in_channels"], 32, 32)).shape == (2, 10)
    # deep untrained nets round differently in float32: the tolerance of the deepest ResNets
    result = export_model(run.run_dir, format="onnx", out=tmp_path / "m.onnx", rtol=1e-2, atol=1e-4)
    assert result.max_abs_diff is not None
