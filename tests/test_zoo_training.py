"""Every family trains on real digits: the loss falls (slow: a few minutes for the whole zoo on 2 cores)."""

import pytest

from cnnlab import api

FAMILIES = ["lenet5", "lenet5_classic", "alexnet", "vgg11_bn", "resnet18", "googlenet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_loss_falls_on_mnist_sample(name, tmp_path):
    run = api.train(
        data="builtin:mnist-sample",
        model=name,
        shots=50,
        epochs=6,
        batch_size=32,
        lr=0.05,
        out=str(tmp_path),
        report=False,
        seed=0,
    )
    losses = [h["train_loss"] for h in run.history]
    assert losses[-1] < 0.9 * losses[0], (
        losses
    )  # falling: 10% below the first epoch's loss (2.30 = ln 10)
    assert (
        run.test_metrics["accuracy"] > 0.2
    )  # twice chance (0.1) after 6 short epochs of 500 images
