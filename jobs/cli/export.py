"""`telucodec export RUN_OR_CHECKPOINT OUT_DIR`: an inference-only model folder (weights as
safetensors, config, provenance, model card) that `encode`, `decode` and `eval` take with --model."""

from __future__ import annotations

from jobs.cli.common import FORMATTER, console, err_console


def register(sub) -> None:
    s = sub.add_parser("export", help="write an inference-only model folder from a run or checkpoint",
                       description="Write OUT_DIR with model.safetensors (the codec's weights and codebooks: no "
                       "optimizer, no discriminator, no pickle), config.json (the model config and its "
                       "fingerprint: sha256 over weights and config), provenance.json (run, step, dataset URL "
                       "and index.json sha256, val metrics at that step) and a model card README.md. A run dir "
                       "exports its best checkpoint (train.best_metric), else its latest; a "
                       "checkpoints/step_NNNNNNNN dir exports that step. A non-empty OUT_DIR is refused "
                       "without --force.",
                       epilog="examples:\n"
                       "  telucodec export runs/r1 models/te-4k\n"
                       "  telucodec export s3://bucket/runs/r1/checkpoints/step_00020000 models/te-20k --force\n"
                       "  telucodec encode speech.wav speech.tcq --model models/te-4k",
                       formatter_class=FORMATTER)
    s.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="run dir or checkpoints/step_NNNNNNNN dir "
                   "(a path or s3:// URL)")
    s.add_argument("out_dir", metavar="OUT_DIR", help="folder (or s3:// prefix) to write the model to")
    s.add_argument("--force", action="store_true", help="write into an OUT_DIR that holds files")
    s.set_defaults(func=export)


def export(args) -> int:
    from pipeline.codec.export import export_model

    exported = export_model(args.source, args.out_dir, force=args.force)
    prov, cfg = exported.provenance, exported.trained.cfg
    snr = prov.val_metrics.get("val/snr")
    console.print(f"{args.out_dir}: step {prov.step} ({prov.chosen_as}) of {prov.run_url}, model "
                  f"{exported.trained.short_fingerprint}, {cfg.bitrate(1) / 1000:.2f}-{cfg.bitrate() / 1000:.2f} kbps "
                  f"(1-{cfg.n_codebooks} codebooks)" + (f", val SNR {snr:.2f} dB" if snr is not None else "")
                  + "; model card in README.md", markup=False, highlight=False)
    for note in prov.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    return 0
