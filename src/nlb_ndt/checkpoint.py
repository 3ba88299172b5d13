"""Stable import path of `load_model` and `save_checkpoint` (they live in
`nlb_ndt.model.checkpoint`); kept so that `from nlb_ndt.checkpoint import load_model` works
in users' scripts whatever the package layout."""

from nlb_ndt.model.checkpoint import load_model, save_checkpoint

__all__ = ["load_model", "save_checkpoint"]
