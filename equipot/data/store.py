"""An on-disk store of labelled structures (HDF5), read one structure at a time.

Datasets too large for memory are converted once (``equipot convert CONFIG.yaml OUT.h5``:
the config's key map, units and typed outputs, with every check of the extxyz reader) and
then named as ``data.train``. Training reads a structure only when a batch needs it, so
the memory of each process is bounded whatever the number of structures, and each
data-parallel process reads only its own share.

Layout (all in eV, Å, e): ``offsets`` (n+1) into the per-atom arrays ``numbers`` and
``positions``; per structure ``cell`` (n, 3, 3), ``pbc`` (n, 3), ``total_charge`` (n);
per label ``targets/NAME/values`` (per atom or per structure, as its field says) and
``targets/NAME/present`` (n) for labels that some structures lack.
"""

import os
from collections.abc import Sequence as SequenceABC
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from ..fields import Field, get_field
from .configuration import Configuration
from .reading import DataError

FORMAT = "equipot-store"
VERSION = 1
CHUNK = 4096  # structures written at a time


def is_store(path: str) -> bool:
    return str(path).endswith((".h5", ".hdf5"))


def write_store(configs: Iterable[Configuration], path: str, fields: Optional[Mapping[str, Field]] = None,
                source: str = "") -> int:
    """Write ``configs`` to the HDF5 file ``path`` (atomically); returns the number written."""
    import h5py

    tmp = f"{path}.tmp"
    n = 0
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"], f.attrs["version"], f.attrs["source"] = FORMAT, VERSION, source
            grow = {}

            def append(name: str, values: np.ndarray, dtype) -> None:
                values = np.asarray(values, dtype=dtype)
                if name not in grow:
                    grow[name] = f.create_dataset(name, shape=(0,) + values.shape[1:], maxshape=(None,) + values.shape[1:],
                                                  dtype=dtype, chunks=True)
                ds = grow[name]
                ds.resize(ds.shape[0] + len(values), axis=0)
                ds[-len(values):] = values

            batch: List[Configuration] = []
            atoms = 0
            append("offsets", [0], np.int64)
            for config in configs:
                batch.append(config)
                if len(batch) == CHUNK:
                    atoms = _write_chunk(f, append, batch, atoms, n, fields)
                    n += len(batch)
                    batch = []
            if batch:
                atoms = _write_chunk(f, append, batch, atoms, n, fields)
                n += len(batch)
            f.attrs["n_structures"] = n
    except BaseException:  # a bad structure (or a kill) leaves no half-written file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if n == 0:
        os.remove(tmp)
        raise DataError(f"{source or path}: no structures to store")
    os.replace(tmp, path)
    return n


def _write_chunk(f, append, batch, atoms: int, first: int, fields) -> int:
    counts = np.array([c.n_atoms for c in batch])
    append("offsets", atoms + np.cumsum(counts), np.int64)
    append("numbers", np.concatenate([c.numbers for c in batch]), np.int16)
    append("positions", np.concatenate([c.positions for c in batch]), np.float64)
    append("cell", np.stack([c.cell for c in batch]), np.float64)
    append("pbc", np.stack([c.pbc for c in batch]), bool)
    append("total_charge", np.array([c.total_charge for c in batch]), np.float64)
    names = sorted({name for c in batch for name in c.targets} | set(f["targets"].keys() if "targets" in f else ()))
    for name in names:
        field = get_field(name, fields)
        per_atom = field.level == "node"
        values, present = [], []
        for c in batch:
            count = c.n_atoms if per_atom else 1
            has = name in c.targets
            present.append(has)
            value = np.asarray(c.targets[name], dtype=np.float64) if has else np.zeros((count,) + field.shape)
            values.append(value.reshape((count,) + field.shape))
        group = f"targets/{name}"
        if group not in f and first > 0:  # a label first seen now: earlier structures lack it
            before = atoms if per_atom else first
            append(f"{group}/values", np.zeros((before,) + field.shape), np.float64)
            append(f"{group}/present", np.zeros(first, dtype=bool), bool)
        append(f"{group}/values", np.concatenate(values), np.float64)
        append(f"{group}/present", present, bool)
    return atoms + int(counts.sum())


class ConfigurationStore(SequenceABC):
    """The structures of a store file as a sequence of :class:`Configuration`, read on access."""

    def __init__(self, path: str, fields: Optional[Mapping[str, Field]] = None):
        import h5py

        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found")
        self.path, self.fields = str(path), dict(fields or {})
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION:
                    raise DataError(f"{path}: not an equipot store of version {VERSION} (make one with `equipot convert`)")
                self.offsets = np.asarray(f["offsets"][:], dtype=np.int64)
                self.target_names = sorted(f["targets"].keys()) if "targets" in f else []
                self.per_atom = {name: get_field(name, self.fields).level == "node" for name in self.target_names}
        except OSError as err:
            raise DataError(f"{path}: unreadable HDF5 file ({err})") from None
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _h5(self):
        import h5py

        if self._file is None or self._pid != os.getpid():  # one handle per process
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Subset(self, range(len(self))[index])
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: structure {index} of {len(self)}")
        i %= len(self)
        f = self._h5()
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        targets = {}
        for name in self.target_names:
            group = f["targets"][name]
            if bool(group["present"][i]):
                targets[name] = group["values"][a:b] if self.per_atom[name] else group["values"][i]
        return Configuration(
            numbers=f["numbers"][a:b].astype(np.int64), positions=f["positions"][a:b], cell=f["cell"][i],
            pbc=f["pbc"][i], targets=targets, source=f"{self.path}, structure {i}",
            total_charge=float(f["total_charge"][i]), fields=self.fields,
        )

    def __getstate__(self):  # handles do not travel to other processes
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def require(self, names: Sequence[str]) -> None:
        """Raise unless some structure carries each label in ``names`` (structures without one
        leave it out of the loss, as in a data file)."""
        f = self._h5()
        for name in names:
            if name not in self.target_names or not f["targets"][name]["present"][:].any():
                raise DataError(f"{self.path}: the training needs {name} labels, and no structure of the store has "
                                f"them; map {name} in data.keys and convert the data again")

    def periodic(self) -> np.ndarray:
        """Whether each structure is periodic in some direction."""
        return np.asarray(self._h5()["pbc"][:], dtype=bool).any(axis=1)

    def labelled(self, name: str) -> np.ndarray:
        """Whether each structure carries the label ``name``."""
        if name not in self.target_names:
            return np.zeros(len(self), dtype=bool)
        return np.asarray(self._h5()["targets"][name]["present"][:], dtype=bool)

    def species(self) -> List[int]:
        """Atomic numbers present, read in chunks."""
        f, seen = self._h5(), set()
        numbers = f["numbers"]
        for start in range(0, numbers.shape[0], 1 << 22):
            seen.update(int(z) for z in np.unique(numbers[start:start + (1 << 22)]))
        return sorted(seen)


class Subset(SequenceABC):
    """Some structures of a sequence, by index, without reading them."""

    def __init__(self, base: Sequence[Configuration], indices: Sequence[int]):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Subset(self.base, self.indices[index])
        return self.base[int(self.indices[index])]


def sample(configs: Sequence[Configuration], size: int, seed: int) -> Sequence[Configuration]:
    """At most ``size`` structures drawn without replacement (all of them if fewer)."""
    if len(configs) <= size:
        return configs
    order = np.sort(np.random.default_rng(seed).choice(len(configs), size, replace=False))
    return Subset(configs, order)
