"""Models: the families, masking, checkpoint formats and inference; no training, no search.

Modules: `ndt` (the NDT), `factory` (MODEL.FAMILY -> a model), `masking`, `checkpoint`
(ours, the original's and other released formats, loaded safely), `inference` (rates from
held-in spikes).
"""
