"""The NDT's objective: what the training loss scores, and a validation that is fixed."""

from __future__ import annotations

import torch

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.typed import typed_config
from nlb_ndt.data.splits import SplitTensors
from nlb_ndt.model.factory import build_model
from nlb_ndt.training.masked_modelling import MaskedModelling

N_IN, N_OUT, T_OBS, T_FWD = 5, 2, 9, 3


def _setup(seed: int = 0):
    cfg = load_config(opts=["MODEL.NUM_LAYERS", 1, "MODEL.HIDDEN_SIZE", 8,
                            "MODEL.EMBED_DIM", 0, "MODEL.NUM_HEADS", 1,
                            "TRAIN.MASK_RATIO", 0.3])
    g = torch.Generator().manual_seed(seed)
    split = SplitTensors(torch.poisson(torch.full((12, T_OBS, N_IN), 1.0), generator=g),
                         torch.poisson(torch.full((12, T_OBS, N_OUT), 1.0), generator=g),
                         torch.poisson(torch.full((12, T_FWD, N_IN + N_OUT), 1.0),
                                       generator=g))
    model = build_model(cfg, num_neurons=N_IN + N_OUT, trial_length=T_OBS + T_FWD,
                        max_spikes=8)
    objective = MaskedModelling(typed_config(cfg).train, max_spikes=8,
                                device=torch.device("cpu"))
    return model, objective, split


def test_training_loss_scores_masked_heldin_and_every_heldout_and_forward_count():
    """Verify that the loss the model is given labels exactly the masked held-in bins,
    every held-out neuron and every forward bin."""
    model, objective, split = _setup()
    seen = {}

    def spy(inputs, labels):
        seen["labels"] = labels
        return model(inputs, labels)

    loss = objective.loss(spy, split, epoch=0, generator=torch.Generator().manual_seed(1))
    labels = seen["labels"]
    scored = labels != -100
    assert scored[:, :T_OBS, N_IN:].all() and scored[:, T_OBS:, :].all()
    heldin = scored[:, :T_OBS, :N_IN]
    assert 0 < heldin.float().mean() < 1  # only the masked held-in bins
    assert (heldin.all(-1) == heldin.any(-1)).all()  # whole bins
    assert torch.isfinite(loss)


def test_validation_is_deterministic_and_scores_all_three_metrics():
    """Verify that validating twice gives identical numbers (fixed mask), and that the
    unmasked loss and co-bps are finite."""
    model, objective, split = _setup()
    target = split.heldout.numpy()
    first = objective.validate(model, split, target, epoch=5)
    second = objective.validate(model, split, target, epoch=5)
    assert first == second
    assert set(first) == {"masked_loss", "unmasked_loss", "val_cobps"}
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
