"""The codec: model, residual quantizer, discriminators, losses and metrics, and the product around
it (bitstream, chunked coding, loading a trained codec, export, coding files)."""
