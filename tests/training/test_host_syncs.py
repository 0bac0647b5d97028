"""A training step reads (almost) nothing back from the device: on a GPU every such read stalls the
host until the queued kernels finish. The step's one read is whether it was finite (the update is
skipped otherwise); loss terms, grad norm and the quantizer's bookkeeping stay on the device until
the logged step reads them in one transfer (MetricWindow).

The count is taken on CPU by wrapping the Tensor methods that turn a tensor into a Python value.
Reads from inside torch.optim are left out: they are the optimizers' per-parameter step counters,
which live on the host even when training on a GPU (not a device read there).

    .venv/bin/pytest tests/training/test_host_syncs.py -q
"""

import sys

import pytest
import torch

from pipeline.training.state import build_state, make_accelerator
from pipeline.training.step import MetricWindow, train_step
from test_train_recipe import adversarial_config

READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    counts = {name: 0 for name in READS}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if "torch/optim/" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                counts[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("per", ["sample", "batch"])
def test_a_training_step_reads_one_value_from_the_device(tmp_path, host_reads, per):
    cfg = adversarial_config(tmp_path, f"model.quantizer_dropout_per={per}", "model.dead_code_ratio=0.5")
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    batch = torch.randn(2, 1, 1600) * 0.3
    train_step(state, batch, accel, cfg)  # the first step reads the codebooks' `initialized` flags
    state.step += 1
    window = MetricWindow()
    for name in READS:
        host_reads[name] = 0
    steps = 3
    for _ in range(steps):
        window.add(train_step(state, batch, accel, cfg))
        state.step += 1
    reads = dict(host_reads)
    # v1's per-batch dropout adds two: its coin is tossed on the host (a CPU tensor) and the level
    # count every rank must run is read back after the broadcast from rank 0
    assert sum(reads.values()) == steps * (1 if per == "sample" else 3), reads
    logged = window.read()
    assert sum(host_reads.values()) == sum(reads.values()) + 1  # the logged step: one transfer
    assert logged["loss/total"] > 0 and logged["grad_norm"] > 0 and "vq/reseeded" in logged
    assert logged["skipped"] == 0.0
