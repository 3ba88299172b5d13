"""The stages, one per script: train one model, rank, make a submission, refit, validate a release.

Each composes the packages below it: `train_one` (train.py), `rank` and `make_submission`
(make_submission.py), `refit` (make_submission.py --refit), `validate_release`
(validate_test_submission.py).
"""
