"""Scores and submissions: co-bps, nlb_tools' scorer, the EvalAI file, ensembles, baselines, plots.

Modules: `metrics`, `evaluation` (nlb_tools' scorer), `evalai_file` (the submission h5),
`ensemble` (averaging rates), `baselines`, `plots`. Trains nothing.
"""
