"""Secure aggregation over hand-carried files (pairwise masking after Bonawitz et al. 2017).

Layers: ``fixedpoint`` (encoding, capacity check), ``prg`` (AES-CTR mask streams), ``pairwise``
(pair keys and per-round seeds), ``accumulate`` (layout, streaming sums), ``server`` (FedAvg,
momentum, FedAdam) are pure math; ``protocol`` turns them into the four file operations
(mask, aggregate, reveal, unmask). See docs/protocol.md.
"""
