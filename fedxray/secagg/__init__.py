"""Secure aggregation over hand-carried files (pairwise masking after Bonawitz et al. 2017).

All pure, no files: ``fixedpoint`` (encoding, capacity check), ``prg`` (AES-CTR mask
streams), ``pairwise`` (pair keys and per-round seeds), ``accumulate`` (layout, streaming
sums), ``server`` (FedAvg, momentum, FedAdam), ``rounds`` (what a closure pins, what a site
masks and reveals, how masks leave a sum) and ``records`` (what each party remembers). The
steps that read and write the files are fedxray.steps (mask, aggregate, reveal, unmask,
abandon). See docs/protocol.md.
"""
