"""Data: downloads, the synthetic dataset, NWB -> cached nlb_tools tensors, PSTHs, typed splits.

Modules: `download/` (resumable HTTP, archives, DANDI and Zenodo), `synthetic` (genuine NWB
files in DANDI's layout, with ground truth), `preprocess` (the tensor cache), `psth`,
`splits` (the train / val tensors a trainer works on). Knows nothing about models.
"""
