"""Neural Data Transformer ensembles for the Neural Latents Benchmark (AESMTE3, rebuilt).

Kept empty on purpose: importing the package must not pull in torch or Ray, so that
light scripts (downloads, config generation) start fast.
"""

__version__ = "0.1.0"
