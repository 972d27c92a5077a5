"""The steps of a federation, one module per command: each verifies what it reads against the
plan, calls the pure layers (secagg, training, evaluation), keeps its party's memory (state
files, the privacy ledger) and returns a typed result. The CLI only parses options, calls one
step and renders the result; the simulation calls the same steps.
"""
