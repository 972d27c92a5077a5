"""Local training: the DP-SGD private step, privacy accounting and ledger, the round loop.

Import the modules themselves (fedxray.training.loop, .ledger, ...): reading the ledger
(``fedxray privacy``) must not pay for importing torch.
"""
