"""Stable import path of `predict_rates` (it lives in `nlb_ndt.model.inference`; the
ensemble of checkpoint files in `nlb_ndt.scoring.ensemble`), kept for users' scripts."""

from nlb_ndt.model.inference import predict_rates
from nlb_ndt.scoring.ensemble import ensemble_rates

__all__ = ["ensemble_rates", "predict_rates"]
