"""Error accumulators: MAE and RMSE of energy, energy per atom, forces, stress and typed outputs.

Energy, forces and stress are reported in meV units; typed outputs (dipoles, charges, ...)
in their own units, with R² over all components as well, and for a scalar output whose labels
are all -1, 0 or +1 (and some ±1) the fraction of the ±1 labels predicted with the right sign.
"""

from typing import Dict

import numpy as np

# metric name -> (unit, factor to the reported unit)
REPORTED = {
    "energy": ("meV", 1000.0),
    "energy_per_atom": ("meV/atom", 1000.0),
    "forces": ("meV/Å", 1000.0),
    "stress": ("meV/Å³", 1000.0),
}
BUILTIN = ("energy", "energies", "forces", "stress", "virial")
# the row of a scalar output's signs: when every label is -1, 0 or +1 (classes, such as R/S; 0 for
# no class, as an atom that is no stereocentre), the summary gives the fraction of the ±1 labels
# predicted with the right sign as NAME_sign_accuracy
SIGN = ":sign"


class ErrorAccumulator:
    """Collects sums of errors and of reference values; ``summary()`` gives MAE/RMSE (and R²)."""

    FIELDS = ("abs", "sq", "count", "ref", "ref_sq")

    def __init__(self):
        self.sums: Dict[str, np.ndarray] = {}

    def add(self, name: str, error: np.ndarray, reference: np.ndarray = None) -> None:
        error = np.asarray(error, dtype=np.float64).reshape(-1)
        ref = np.zeros_like(error) if reference is None else np.asarray(reference, dtype=np.float64).reshape(-1)
        row = np.array([np.abs(error).sum(), (error**2).sum(), error.size, ref.sum(), (ref**2).sum()])
        self.sums[name] = self.sums.get(name, np.zeros(5)) + row

    def add_signs(self, name: str, pred: np.ndarray, ref: np.ndarray) -> None:
        """Count the predictions of the wrong sign among labels ±1, the labels ±1, and the labels
        that are not -1, 0 or 1 (0: no class, as for an atom that is no stereocentre)."""
        pred, ref = np.asarray(pred), np.asarray(ref)
        labelled = np.abs(ref) == 1.0
        wrong = (np.sign(pred) != np.sign(ref)) & labelled
        other = ~(labelled | (ref == 0.0))
        row = np.array([wrong.sum(), labelled.sum(), other.sum(), 0, 0])  # in the slots of FIELDS
        self.sums[name + SIGN] = self.sums.get(name + SIGN, np.zeros(5)) + row

    def add_batch(self, pred: dict, targets: dict, n_atoms: np.ndarray, scalars=()) -> None:
        """Errors of a batch; ``scalars`` names the typed outputs of one number per structure or
        atom, whose signs are also counted. NaN labels (a label some structures lack) are left out."""
        if "energy" in targets:
            err = pred["energy"] - targets["energy"]
            known = np.isfinite(targets["energy"])  # a NaN prediction of a known label shows as NaN
            self.add("energy", err[known])
            self.add("energy_per_atom", (err / n_atoms)[known])
        for name in ("forces", "stress"):
            if name in targets:
                err = (pred[name] - targets[name]).reshape(-1)
                self.add(name, err[np.isfinite(np.asarray(targets[name]).reshape(-1))])
        for name, ref in targets.items():  # typed outputs
            if name not in BUILTIN and name in pred:
                p, ref = np.asarray(pred[name]).reshape(-1), np.asarray(ref).reshape(-1)
                known = np.isfinite(ref)
                self.add(name, p[known] - ref[known], ref[known])
                if name in scalars:  # one number per structure or atom: its sign as a class, too
                    self.add_signs(name, p[known], ref[known])

    @property
    def count(self) -> Dict[str, float]:
        return {name: row[2] for name, row in self.sums.items()}

    def extend(self, names) -> None:
        """Rows of zeros for ``names`` not yet seen (so that processes reduce the same rows)."""
        for name in names:
            self.sums.setdefault(name, np.zeros(5))

    def state(self) -> np.ndarray:
        """Flat array of sums, names sorted (for reduction over processes)."""
        return np.concatenate([self.sums[n] for n in sorted(self.sums)]) if self.sums else np.zeros(0)

    def load_state(self, flat: np.ndarray) -> None:
        for name, row in zip(sorted(self.sums), np.asarray(flat).reshape(-1, 5)):
            self.sums[name] = np.array(row, dtype=np.float64)

    def summary(self) -> Dict[str, float]:
        out = {}
        for name in sorted(self.sums):
            abs_sum, sq_sum, count, ref_sum, ref_sq = self.sums[name]
            if name.endswith(SIGN):  # wrong signs, labels ±1, labels other than -1, 0, 1
                wrong, labelled, other = abs_sum, sq_sum, count
                if labelled > 0 and other == 0:
                    out[f"{name[:-len(SIGN)]}_sign_accuracy"] = 1.0 - wrong / labelled
                continue
            reported = name.split("[")[0]  # forces[H]: the forces of one element
            _, factor = REPORTED.get(reported, ("", 1.0))
            if count == 0:  # no structure here carries this label (a validation split without crystals, say)
                out[f"{name}_mae"] = out[f"{name}_rmse"] = float("nan")
                continue
            n = count
            out[f"{name}_mae"] = factor * abs_sum / n
            out[f"{name}_rmse"] = factor * np.sqrt(sq_sum / n)
            if reported not in REPORTED:
                variance = ref_sq - ref_sum**2 / n
                out[f"{name}_r2"] = 1.0 - sq_sum / variance if variance > 0 else float("nan")
        return out
