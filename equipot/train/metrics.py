"""Error accumulators: MAE and RMSE of energy, energy per atom, forces and stress."""

from typing import Dict

import numpy as np

# metric name -> (prediction key, factor to the reported unit, unit)
REPORTED = {
    "energy": ("meV", 1000.0),
    "energy_per_atom": ("meV/atom", 1000.0),
    "forces": ("meV/Å", 1000.0),
    "stress": ("meV/Å³", 1000.0),
}


class ErrorAccumulator:
    """Collects absolute and squared errors; ``summary()`` gives MAE/RMSE in meV units."""

    def __init__(self):
        self.abs_sum: Dict[str, float] = {}
        self.sq_sum: Dict[str, float] = {}
        self.count: Dict[str, float] = {}

    def add(self, name: str, error: np.ndarray) -> None:
        error = np.asarray(error, dtype=np.float64).reshape(-1)
        self.abs_sum[name] = self.abs_sum.get(name, 0.0) + float(np.abs(error).sum())
        self.sq_sum[name] = self.sq_sum.get(name, 0.0) + float((error**2).sum())
        self.count[name] = self.count.get(name, 0.0) + error.size

    def add_batch(self, pred: dict, targets: dict, n_atoms: np.ndarray) -> None:
        if "energy" in targets:
            err = pred["energy"] - targets["energy"]
            self.add("energy", err)
            self.add("energy_per_atom", err / n_atoms)
        for name in ("forces", "stress"):
            if name in targets:
                self.add(name, pred[name] - targets[name])

    def state(self) -> np.ndarray:
        """Flat array of sums (for reduction over processes)."""
        names = sorted(self.count)
        return np.array([[self.abs_sum[n], self.sq_sum[n], self.count[n]] for n in names]).reshape(-1)

    def summary(self) -> Dict[str, float]:
        out = {}
        for name in sorted(self.count):
            unit, factor = REPORTED[name]
            n = max(self.count[name], 1.0)
            out[f"{name}_mae"] = factor * self.abs_sum[name] / n
            out[f"{name}_rmse"] = factor * np.sqrt(self.sq_sum[name] / n)
        return out
