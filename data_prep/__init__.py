"""Raw audio to datasets: source layouts (sources), per-file decoding (prep_file), prep, the
synthetic demo corpus (corpus) and reshard."""
