"""The training recipe's knobs outside the quantizer and losses: separate codec and discriminator
gradient clips, no weight decay sneaking into the discriminator, a schedule with no scheduler state,
the best checkpoint by a perceptual metric, a health guard that lets the GAN stage trade SNR, and
train.compile's parts tracing whole.

    .venv/bin/pytest tests/training/test_train_recipe.py -q
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from audio_fixtures import make_dataset
from pipeline.runs.checkpoints import Checkpoints
from pipeline.config import load_config
from pipeline.training.duties import health_problems
from pipeline.evaluation.scorer import evaluate_model
from pipeline.training.state import build_state, make_accelerator
from pipeline.training.step import train_step
from run_fixtures import OFF_CLOUD, TINY_MEL, TINY_RUN

REPO = Path(__file__).resolve().parents[2]


def adversarial_config(tmp_path, *overrides):
    return load_config([REPO / "configs" / "base.yaml"], [
        *TINY_RUN, *TINY_MEL, f"run.dir={tmp_path / 'run'}", "train.workers=0", "loss.adversarial=true",
        "loss.adv_start_step=0", "model.disc_channels=2", "model.disc_periods=[2]",
        "model.disc_stft_windows=[128]", "tracking.enabled=false", *OFF_CLOUD, *overrides])


def test_discriminator_has_its_own_clip_and_the_configs_weight_decay(tmp_path):
    cfg = adversarial_config(tmp_path, "train.grad_clip=1000", "train.disc_grad_clip=0.001")
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    assert [g["weight_decay"] for g in state.opt_d.param_groups] == [0.0]  # AdamW's default is 0.01
    seen = []  # the discriminator's gradient norm when its optimizer steps
    state.opt_d.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]))))
    metrics = train_step(state, torch.randn(2, 1, 1600) * 0.3, accel, cfg)
    assert len(seen) == 1 and 0 < seen[0] <= 0.001 * 1.01  # clipped at disc_grad_clip...
    assert metrics["grad_norm"] > 0.001 and "disc" in metrics  # ...while the codec's is not


def test_the_generator_pass_leaves_the_discriminator_without_gradients(tmp_path):
    """The discriminator runs frozen in the generator pass: no gradient for it is computed (or, under
    DDP, all-reduced) only to be thrown away, and it is trainable again for its own step."""
    cfg = adversarial_config(tmp_path)
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    metrics = train_step(state, torch.randn(2, 1, 1600) * 0.3, accel, cfg)
    assert "loss/adv" in metrics and float(metrics["loss/adv"]) != 0.0  # the generator did see it
    params = list(state.disc.parameters())
    assert all(p.grad is None for p in params) and all(p.requires_grad for p in params)


def test_ddp_settings_follow_the_recipe(tmp_path):
    """No buffer broadcast (the quantizer syncs its own EMA buffers); DDP looks for unused weights
    only when per-batch quantizer dropout can skip levels."""
    handler = make_accelerator(adversarial_config(tmp_path)).ddp_handler
    assert handler.broadcast_buffers is False and handler.find_unused_parameters is False
    v1 = adversarial_config(tmp_path, "model.quantizer_dropout_per=batch", "model.quantizer_dropout=0.5")
    assert make_accelerator(v1).ddp_handler.find_unused_parameters is True


def test_wrapping_the_codec_in_ddp_prints_no_deprecation_warning(tmp_path):
    """torch 2.13 warns once per rank and worker group that broadcast_buffers is deprecated;
    its False still means no buffer sync, which is what we want, so the warning is not shown."""
    import torch.distributed as dist

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        handler = make_accelerator(adversarial_config(tmp_path)).ddp_handler
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
        try:
            ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), **handler.to_kwargs())
        finally:
            dist.destroy_process_group()
    assert ddp.forward_sync_buffers is False
    assert not [w for w in shown if "broadcast_buffers" in str(w.message)], [str(w.message) for w in shown]


def test_the_health_guard_lets_the_gan_stage_trade_snr_but_not_level(tmp_path):
    cfg = adversarial_config(tmp_path, "loss.adv_start_step=100", "train.warmup_steps=10")
    quiet_loud = {"val/snr": -2.0, "val/range_ratio": 0.9}
    assert any("worse than silence" in p for p in health_problems(quiet_loud, 50, cfg))
    assert health_problems(quiet_loud, 100, cfg) == []  # adversarial from step 100
    collapsed = {"val/snr": -2.0, "val/range_ratio": 0.3}
    assert any("collapsing" in p for p in health_problems(collapsed, 100, cfg))


def test_best_checkpoint_by_a_metric_where_lower_is_better(tmp_path):
    ck = Checkpoints(str(tmp_path))
    assert ck.mark_best(1, "val/mel_distance", 2.0, higher_is_better=False)
    assert not ck.mark_best(2, "val/mel_distance", 2.5, higher_is_better=False)
    assert ck.mark_best(3, "val/mel_distance", 1.5, higher_is_better=False)
    # a best by another metric (train.best_metric changed on resume) is replaced by the new one
    assert ck.mark_best(4, "val/pesq", 1.1)
    assert ck.best() == {"step": 4, "metric": "val/pesq", "value": 1.1}


def test_best_is_chosen_by_pesq_and_no_scheduler_state_is_saved(tmp_path):
    data = str(tmp_path / "data")
    make_dataset(data, [4], sr=16000, seconds=1.0)
    cfg = load_config([REPO / "configs" / "base.yaml", REPO / "configs" / "tiny.yaml"], [
        *TINY_RUN, *TINY_MEL, f"data.url={data}", f"run.dir={tmp_path / 'run'}", "train.workers=0",
        "train.steps=2", "train.eval_every=1", "train.eval_seconds=1.0", "train.checkpoint_every=1",
        "tracking.enabled=false"])
    from pipeline.training.loop import train

    assert train(cfg).status == "finished"
    ck = Checkpoints(cfg.run.dir)
    best = ck.best()
    assert best["metric"] == "val/pesq" and best["step"] in (1, 2)
    meta = [ck.load(s, "train") for s in ck.steps()]
    assert all("best_snr" not in m for m in meta)
    # the learning rate is a function of the step: nothing like a never-stepped LambdaLR is kept
    assert set(ck.load(2, "optim")) == {"opt_g", "disc", "opt_d"}


def test_compiled_parts_trace_whole_and_train_as_eager_does(tmp_path):
    """train.compile's compile_parts on the real codec and discriminator: every part traces as one
    graph (fullgraph: no graph break, no host read inside the encoder, decoder or a sub-discriminator),
    the state-dict keys stay (a checkpoint loads into either), and two full steps (codec and
    discriminator) give eager's losses and weights. AOTAutograd's eager backend traces forward and
    backward as inductor would without generating kernels (a CPU cannot stand in for the GPU's
    Triton code here)."""
    import copy

    from pipeline.training.state import compile_parts

    cfg = adversarial_config(tmp_path)
    accel = make_accelerator(cfg)
    compiled = build_state(cfg, accel)
    eager = copy.deepcopy(compiled)
    keys = [list(m.state_dict()) for m in (compiled.model, compiled.disc)]
    compile_parts(compiled.model, compiled.disc, backend="aot_eager", fullgraph=True)
    assert [list(m.state_dict()) for m in (compiled.model, compiled.disc)] == keys
    for step in range(2):
        batch = torch.randn(2, 1, 1600, generator=torch.Generator().manual_seed(step)) * 0.3
        torch.manual_seed(step)
        got = train_step(compiled, batch, accel, cfg)
        torch.manual_seed(step)
        want = train_step(eager, batch, accel, cfg)
        assert {k: float(v) for k, v in got.items() if k.startswith("loss")} == pytest.approx(
            {k: float(v) for k, v in want.items() if k.startswith("loss")}, rel=1e-5)
    for a, b in zip([*compiled.model.parameters(), *compiled.disc.parameters()],
                    [*eager.model.parameters(), *eager.disc.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(m._compiled_call_impl is not None  # each part did go through torch.compile
               for m in (compiled.model.encoder, compiled.model.decoder, *compiled.disc.subs.values()))


def test_counting_a_steps_flops_leaves_the_compiled_parts_compiled(tmp_path):
    """The GPU check and train_bench count one step's FLOPs for MFU. A compiled part called under
    FlopCounterMode runs eager, and torch then skips its code for good: without count_flops' eager
    stance every later step of a `train.compile` run would run eager while being reported as
    compiled. A backend that counts its graph calls shows which code ran."""
    from pipeline.training.flops import count_flops
    from pipeline.training.state import compile_parts

    graph_calls, compiles = [], []

    def counting_backend(gm, example_inputs):
        compiles.append(1)

        def run(*args):
            graph_calls.append(1)
            return gm(*args)
        return run

    cfg = adversarial_config(tmp_path)
    accel = make_accelerator(cfg)
    state = build_state(cfg, accel)
    compile_parts(state.model, state.disc, backend=counting_backend)
    batch = torch.randn(2, 1, 1600, generator=torch.Generator().manual_seed(0)) * 0.3
    train_step(state, batch, accel, cfg)  # compiles the parts
    before = len(graph_calls)
    train_step(state, batch, accel, cfg)
    per_step = len(graph_calls) - before  # graph calls of a compiled step
    assert per_step > 0
    flops, metrics = count_flops(lambda: train_step(state, batch, accel, cfg))
    assert flops > 1e6 and len(graph_calls) == before + per_step  # counted in eager: no graph ran
    assert torch.isfinite(metrics["loss/total"])  # the step ran and its metrics come back
    train_step(state, batch, accel, cfg)
    assert len(graph_calls) == before + 2 * per_step  # and the compiled graphs run again afterwards
    # evaluation runs eager: clips of new lengths compile nothing and leave the graphs in use
    compiled, calls = len(compiles), len(graph_calls)
    clips = [(f"c{n}", np.random.default_rng(n).uniform(-0.3, 0.3, n).astype(np.float32)) for n in (3200, 4160)]
    assert np.isfinite(evaluate_model(state.model, clips, cfg.model.sample_rate)["val/snr"])
    assert (len(compiles), len(graph_calls)) == (compiled, calls)
    train_step(state, batch, accel, cfg)
    assert len(graph_calls) == calls + per_step
