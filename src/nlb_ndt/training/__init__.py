"""Training one model: the loop, its objective, run folder, snapshot tracker, schedules; no Ray.

Modules: `trainer` (the loop), `masked_modelling` (the NDT's loss and validation),
`run_folder` (every file of a run), `tracker` (best values, patience), `interrupts`
(Ctrl-C, SIGTERM, deadlines), `optim`, `schedules`, `tensorboard_log`.
"""
