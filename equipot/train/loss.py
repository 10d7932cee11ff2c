"""Weighted loss as sums and counts, so it can be normalised over a global batch.

Each term is a sum of squared errors and the number of items it sums; the loss is
Σ_k w_k · sum_k / count_k with the counts of the *global* batch. Summing gradients over
data-parallel processes then gives exactly the gradient of one process that sees the
whole batch. A label that a structure lacks is NaN in the batch (:func:`equipot.data.loader._batch`):
its entries add nothing to the sums and are not counted.
"""

from typing import Dict, Tuple

import torch

from ..config import LossConfig
from ..graph import AtomicGraph


def squared_error_terms(
    pred: Dict[str, torch.Tensor], graph: AtomicGraph, weights: LossConfig
) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{term: (sum of squared errors, count)} for the terms with a positive weight (for a typed
    output with ``forms: {name: sign}``, the sum of its logistic losses instead)."""
    terms = {}
    for name in ("energy", "forces", "stress"):
        if getattr(weights, name) > 0 and name not in graph.targets:
            raise ValueError(
                f"loss term {name!r} has weight {getattr(weights, name)} but the data carry no {name} labels; "
                f"set its weight to 0 or map {name} in data.keys"
            )
    n_atoms = graph.atoms_per_graph().to(torch.float64)
    if weights.energy > 0:
        p, ref, known = _known(pred["energy"], graph.targets["energy"].to(torch.float64))
        err = (p - ref) / n_atoms
        terms["energy"] = (err.pow(2).sum(), known)
    for name in ("forces", "stress"):
        if getattr(weights, name) > 0:
            p, ref, known = _known(pred[name], graph.targets[name].to(pred[name].dtype))
            terms[name] = ((p - ref).pow(2).sum().to(torch.float64), known)
    for name, w in weights.outputs.items():  # typed outputs: MSE over all components, or the sign form
        if w <= 0:
            continue
        if name not in graph.targets:
            raise ValueError(
                f"loss term {name!r} has weight {w} but the data carry no {name} labels; "
                f"set its weight to 0 or map {name} in data.keys"
            )
        p, ref, known = _known(pred[name], graph.targets[name].to(pred[name].dtype))
        if weights.forms.get(name, "mse") == "sign":  # logistic loss of the sign (a zero label: log 2, no gradient)
            err = torch.nn.functional.softplus(-torch.sign(ref) * p)
            err = torch.where(torch.isfinite(graph.targets[name]).to(err.device), err, 0.0)
        else:
            err = (p - ref).pow(2)
        terms[name] = (err.sum().to(torch.float64), known)
    return terms


def _known(pred: torch.Tensor, ref: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prediction and label with each entry whose label is missing (NaN) set to 0 in both, so
    that it adds neither error nor gradient (also where the prediction itself is NaN, as the
    dipole of a crystal is), and the number of known entries."""
    known = torch.isfinite(ref)
    if bool(known.all()):
        return pred, ref, torch.tensor(float(ref.numel()), dtype=torch.float64)
    # counts stay on the CPU, as in the first case (the reductions over processes expect it)
    return (torch.where(known, pred, 0.0), torch.where(known, ref, 0.0),
            known.sum().to(device="cpu", dtype=torch.float64))


def loss_names(weights: LossConfig):
    """The terms :func:`squared_error_terms` returns, sorted: those with a positive weight."""
    names = [n for n in ("energy", "forces", "stress") if getattr(weights, n) > 0]
    return sorted(names + [n for n, w in weights.outputs.items() if w > 0])


def combine(terms: Dict[str, Tuple[torch.Tensor, torch.Tensor]], counts: Dict[str, torch.Tensor], weights: LossConfig) -> torch.Tensor:
    """Σ_k w_k · sum_k / counts_k; ``counts`` may be global (reduced over processes)."""
    total = 0.0
    for name, (sq_sum, _) in terms.items():
        total = total + weights.weight(name) * sq_sum / counts[name].clamp(min=1.0)
    return total
