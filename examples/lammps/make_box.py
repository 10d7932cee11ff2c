"""Write box.data: 8 acetylacetone molecules (from the shipped demo data) in a periodic box."""

import ase.io
import numpy as np
from ase import Atoms
from importlib.resources import files

molecule = ase.io.read(str(files("equipot.demo_data") / "acac_train.xyz"), index=0)
positions = molecule.positions - molecule.positions.mean(0)
length, parts = 14.0, []
for k, corner in enumerate(np.array([[i, j, l] for i in range(2) for j in range(2) for l in range(2)])):
    parts.append(Atoms(molecule.numbers, positions + (corner + 0.25) * length / 2))
box = sum(parts[1:], parts[0])
box.cell, box.pbc = [length] * 3, True
box.wrap()
ase.io.write("box.data", box, format="lammps-data", specorder=["H", "C", "O"], masses=False)
print(f"box.data: {len(box)} atoms")
