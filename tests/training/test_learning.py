"""The old codec's first success criterion, now a test: the tiny config learns on CPU.

Synthesized Telugu speech -> prep -> configs/tiny.yaml trained in this process -> held-out clips
(the test split: speakers never seen in training) must reach SNR > 0 dB and an output/input range
ratio above 0.7. At 500 CPU steps (one thread) this config measured SNR 0.62-0.76 dB and range
ratio 0.81-0.85 over seeds 0-2 (see README's quality section).
Slow (a few minutes on 2 cores); runs in CI.
"""

import numpy as np
import pytest
import torch

from data_prep.corpus import synthesize_corpus
from data_prep.prep import run_prep
from pipeline.config import load_config
from pipeline.evaluation.clips import load_eval_clips
from pipeline.codec.inference import load_codec
from pipeline.codec.metrics import range_ratio, snr_db
from pipeline.runs.rundir import RunDir
from pipeline.training.loop import train

pytestmark = pytest.mark.slow


def test_tiny_codec_learns_positive_snr_on_held_out_speakers(tmp_path):
    corpus = synthesize_corpus(tmp_path / "corpus", minutes=3.0, seed=0)
    cfg = load_config(["configs/base.yaml", "configs/tiny.yaml"],
                      [f"data.url={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}", "train.workers=0",
                       "train.batch_size=8", "train.eval_split=test"])  # tiny's 8 rows per rank, in one process
    run_prep([str(corpus.manifest)], cfg.data.url, cfg.prep, progress=False)
    result = train(cfg)
    assert result.status == "finished" and result.step == cfg.train.steps

    codec, _, step = load_codec(f"{cfg.run.dir}/checkpoints/step_{cfg.train.steps:08d}")  # the last, not the best
    assert step == cfg.train.steps
    clips = load_eval_clips(cfg.data.url, "test", 8, 4.0, cfg.model.sample_rate)
    assert len(clips) >= 3
    snrs, ratios = [], []
    with torch.no_grad():
        for _, audio in clips:
            x = torch.from_numpy(audio)[None, None]
            y = codec(x).audio
            snrs.append(float(snr_db(x, y)[0]))
            ratios.append(float(range_ratio(x, y)[0]))
    print(f"held-out SNR per clip {np.round(snrs, 2)}, range ratio {np.round(ratios, 2)}")
    assert np.mean(snrs) > 0.0
    assert np.mean(ratios) > 0.7  # the old tanh codec sat near 0.1
    # the run recorded its history: a metrics line per logged step and the evals
    records = RunDir(cfg.run.dir).metrics.read()
    assert any("val/snr" in r for r in records)
    assert max(r["step"] for r in records) == cfg.train.steps
