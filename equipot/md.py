"""`equipot md MODEL STRUCTURE`: molecular dynamics through ASE (NVE or Langevin NVT)."""

import os
from dataclasses import dataclass
from typing import Optional

import ase.io
import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from .calculator import EquipotCalculator


@dataclass
class MDResult:
    trajectory: str
    log: str
    steps: int
    energy_drift_meV_per_atom: Optional[float]  # NVE only: |E_total(end) - E_total(start)| / N
    max_energy_deviation_meV_per_atom: Optional[float]
    max_forces_std: Optional[float] = None  # a committee: the largest per-atom spread of its forces (eV/Å) seen


def run_md(
    model_path,  # a model file, or several: a committee (EquipotCalculator), whose spread is logged
    structure_path: str,
    out_dir: str,
    ensemble: str = "nve",
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    steps: int = 1000,
    friction_per_fs: float = 0.01,
    interval: int = 10,
    dtype: Optional[str] = None,
    seed: int = 1234,
    progress: bool = True,
    total_charge: Optional[float] = None,
    compile: bool = False,
    tabulate: Optional[bool] = None,
) -> MDResult:
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"ensemble must be 'nve' or 'nvt', got {ensemble!r}")
    atoms = ase.io.read(structure_path, index=0)
    # total charge: else atoms.info, else 0; compile, tabulate: see EquipotCalculator
    atoms.calc = EquipotCalculator(model_path, dtype=dtype, total_charge=total_charge, compile=compile,
                                   tabulate=tabulate)
    rng = np.random.default_rng(seed)
    # thermalize_momenta is ASE >= 3.29's name for MaxwellBoltzmannDistribution
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    else:
        atoms.set_constraint(FixCom())  # keeps the centre of mass still without biasing the ensemble
        dyn = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    os.makedirs(out_dir, exist_ok=True)
    traj_path = os.path.join(out_dir, "md.xyz")
    log_path = os.path.join(out_dir, "md.log")
    if os.path.exists(traj_path):
        os.remove(traj_path)
    n = len(atoms)
    totals, spreads = [], []
    committee = len(atoms.calc.models) > 1

    def record():
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        totals.append(epot + ekin)
        extra = ""
        if committee:  # the spread of the models' forces, per atom in the trajectory, its largest in the log
            atoms.arrays["forces_std"] = atoms.calc.get_property("forces_std", atoms)
            spreads.append(float(atoms.arrays["forces_std"].max()))
            extra = f" {spreads[-1]:14.6f}"
        ase.io.write(traj_path, atoms, format="extxyz", append=True)
        with open(log_path, "a") as f:
            t_ps = dyn.get_time() / (1000 * units.fs)
            temp = ekin / (1.5 * units.kB * n)
            f.write(f"{t_ps:12.4f} {epot:16.6f} {ekin:12.6f} {epot + ekin:16.6f} {temp:10.2f}{extra}\n")

    with open(log_path, "w") as f:
        f.write(f"# {ensemble.upper()} {structure_path}: time_ps epot_eV ekin_eV etot_eV temperature_K"
                + (" max_forces_std_eV/A" if committee else "") + "\n")
    record()
    bar = tqdm(total=steps, desc=f"MD {ensemble.upper()}", disable=not progress)
    done = 0
    while done < steps:
        chunk = min(interval, steps - done)
        dyn.run(chunk)
        done += chunk
        record()
        bar.update(chunk)
        bar.set_postfix(T=f"{atoms.get_temperature():.0f}K")
    bar.close()
    drift = dev = None
    if ensemble == "nve":
        totals_arr = np.array(totals)
        drift = 1000 * abs(totals_arr[-1] - totals_arr[0]) / n
        dev = 1000 * np.max(np.abs(totals_arr - totals_arr[0])) / n
    return MDResult(traj_path, log_path, steps, drift, dev, max(spreads) if spreads else None)
