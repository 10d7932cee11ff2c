"""Model files (safetensors, never unpickled), inference errors, evaluation and MD."""

import dataclasses
import json
import os
import pickle

import ase.io
import matplotlib.image
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import IO_TINY_MODEL
from hostile import Payload

from equipot.calculator import EquipotCalculator
from equipot.config import config_from_dict
from equipot.data import compute_statistics, fit_e0, make_batch, read_configurations, species_of
from equipot.evaluate import CommitteeError, committee_predict, evaluate_file, format_table, predict, write_json
from equipot.md import run_md
from equipot.model import ModelFileError, UnknownElementError, build_model, load_model, save_model
from equipot.model.model_file import FORMAT_VERSION

PNG = b"\x89PNG\r\n\x1a\n"


def metadata_of(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def rewrite(path, target, tensors=None, **changes):
    """Copy model file ``path`` to ``target`` with changed metadata or tensors."""
    metadata = metadata_of(path)
    metadata.update(changes)
    save_file(tensors if tensors is not None else load_file(str(path)), str(target), metadata=metadata)
    return str(target)


# ----------------------------------------------------------------------------- round trip


def test_round_trip(io_tiny_model, io_small_xyz, tmp_path):
    model = load_model(str(io_tiny_model))
    assert model.dtype == torch.float64  # saved dtype is kept
    assert not model.training
    configs = read_configurations(str(io_small_xyz))[:3]
    batch = make_batch(configs, model.model_config.r_max, dtype=torch.float64)
    before = model(batch)
    # perturb, save, load: the loaded model is the perturbed one
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "copy.safetensors"
    save_model(str(path), model, model.model_config, model.statistics)
    again = load_model(str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    after, reloaded = model(batch), again(batch)
    for name in ("energy", "forces"):
        assert torch.equal(after[name], reloaded[name])
    assert not torch.allclose(before["forces"], after["forces"], rtol=0, atol=1e-6)
    assert again.model_config == model.model_config
    assert again.statistics == model.statistics
    assert metadata_of(path)["format_version"] == str(FORMAT_VERSION)
    as32 = load_model(str(path), dtype=torch.float32)
    assert as32.dtype == torch.float32
    assert torch.allclose(as32(batch.to(dtype=torch.float32))["energy"].double(), after["energy"], rtol=1e-5)


def test_product_mixing_round_trip_and_files_without_the_key(io_tiny_model, io_small_xyz, tmp_path):
    """A model with mixed node products keeps its mixing maps through a file; a file written
    before the option existed (no ``product_mixing`` in its config) loads without them."""
    old = load_model(str(io_tiny_model))
    config = dataclasses.replace(old.model_config, product_mixing=True)
    torch.manual_seed(3)
    model = build_model(config, old.statistics).to(torch.float64)
    assert any(".product.mix." in name for name, _ in model.named_parameters())
    path = tmp_path / "mix.safetensors"
    save_model(str(path), model, config, old.statistics)
    again = load_model(str(path))
    assert again.model_config.product_mixing
    batch = make_batch(read_configurations(str(io_small_xyz))[:2], config.r_max, dtype=torch.float64)
    # equal up to the order of e3nn's generated contractions (a freshly built model's differ)
    assert torch.allclose(model(batch)["forces"], again(batch)["forces"], rtol=0, atol=1e-9)
    settings = json.loads(metadata_of(io_tiny_model)["model_config"])
    settings.pop("product_mixing")
    legacy = rewrite(io_tiny_model, tmp_path / "legacy.safetensors", model_config=json.dumps(settings))
    loaded = load_model(legacy)
    assert not loaded.model_config.product_mixing
    assert not any(".product.mix." in name for name, _ in loaded.named_parameters())


def test_gated_odd_heads_round_trip_and_files_without_the_key(io_tiny_model, io_small_xyz, tmp_path):
    """``gate_odd_outputs`` travels in the model file with its gate weights; a file written
    before the option existed loads with plain heads."""
    from equipot.config import OutputConfig

    old = load_model(str(io_tiny_model))
    config = dataclasses.replace(old.model_config, parity="both", outputs={"chirality": OutputConfig("0o")},
                                 gate_odd_outputs=True)
    torch.manual_seed(5)
    model = build_model(config, old.statistics).to(torch.float64)
    path = tmp_path / "gated.safetensors"
    save_model(str(path), model, config, old.statistics)
    again = load_model(str(path))
    assert again.model_config.gate_odd_outputs
    assert any("odd_gate" in name for name, _ in again.named_parameters())
    batch = make_batch(read_configurations(str(io_small_xyz))[:2], config.r_max, dtype=torch.float64)
    assert torch.allclose(model(batch)["chirality"], again(batch)["chirality"], rtol=0, atol=1e-9)
    plain = dataclasses.replace(config, gate_odd_outputs=False)
    save_model(str(tmp_path / "plain.safetensors"), build_model(plain, old.statistics), plain, old.statistics)
    settings = json.loads(metadata_of(tmp_path / "plain.safetensors")["model_config"])
    settings.pop("gate_odd_outputs")
    legacy = rewrite(tmp_path / "plain.safetensors", tmp_path / "legacy.safetensors", model_config=json.dumps(settings))
    loaded = load_model(legacy)
    assert not loaded.model_config.gate_odd_outputs
    assert not any("odd_gate" in name for name, _ in loaded.named_parameters())


# ----------------------------------------------------------------------------- damaged files


def test_truncated_empty_and_garbage_model_files(io_tiny_model, tmp_path):
    data = io_tiny_model.read_bytes()
    for name, content in [("half", data[: len(data) // 2]), ("head", data[:100]), ("tail", data[:-1]),
                          ("empty", b""), ("text", b"hello, I am not a model\n" * 10)]:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(ModelFileError) as err:
            load_model(str(path))
        assert str(path) in str(err.value), name
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(str(tmp_path / "missing.safetensors"))


def test_pickle_renamed_to_safetensors_is_rejected_not_executed(tmp_path):
    marker = tmp_path / "executed"
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps({"weights": Payload(str(marker))}))
    zipped = tmp_path / "torch.safetensors"
    torch.save({"weights": Payload(str(marker))}, str(zipped))
    # sanity check of the payload: what unpickling it would call creates the marker
    probe = tmp_path / "probe"
    call, args = Payload(str(probe)).__reduce__()
    call(*args)
    assert probe.exists()
    for path in (plain, zipped):
        with pytest.raises(ModelFileError, match="not a readable equipot model file"):
            load_model(str(path))
    assert not marker.exists()


def test_other_format_version_and_foreign_files(io_tiny_model, tmp_path):
    newer = rewrite(io_tiny_model, tmp_path / "v2.safetensors", format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError) as err:
        load_model(newer)
    assert f"format version {FORMAT_VERSION + 1}" in str(err.value)
    assert f"reads versions 2, {FORMAT_VERSION}" in str(err.value)
    odd = rewrite(io_tiny_model, tmp_path / "vx.safetensors", format_version="one")
    with pytest.raises(ModelFileError, match="format version"):
        load_model(odd)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not an equipot model file"):
        load_model(str(foreign))
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(3)}, str(bare))
    with pytest.raises(ModelFileError, match="not an equipot model file"):
        load_model(str(bare))


def test_damaged_metadata_and_mismatched_weights(io_tiny_model, tmp_path):
    with pytest.raises(ModelFileError, match="damaged metadata"):
        load_model(rewrite(io_tiny_model, tmp_path / "json.safetensors", model_config="{not json"))
    config = json.loads(metadata_of(io_tiny_model)["model_config"])
    with pytest.raises(ModelFileError, match="damaged metadata"):
        load_model(rewrite(io_tiny_model, tmp_path / "key.safetensors",
                           model_config=json.dumps({**config, "chanels": 4})))
    # weights of another shape than the configuration says
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(rewrite(io_tiny_model, tmp_path / "shape.safetensors",
                           model_config=json.dumps({**config, "channels": config["channels"] + 4})))
    tensors = load_file(str(io_tiny_model))
    tensors.pop(sorted(tensors)[0])
    with pytest.raises(ModelFileError, match="missing"):
        load_model(rewrite(io_tiny_model, tmp_path / "fewer.safetensors", tensors=tensors))
    with pytest.raises(ModelFileError, match="dtype"):
        load_model(rewrite(io_tiny_model, tmp_path / "dtype.safetensors", dtype="Linear"))
    stats = json.loads(metadata_of(io_tiny_model)["statistics"])
    del stats["e0"]["8"]
    with pytest.raises(ModelFileError, match="damaged metadata"):
        load_model(rewrite(io_tiny_model, tmp_path / "stats.safetensors", statistics=json.dumps(stats)))


# ----------------------------------------------------------------------------- inference


def test_unknown_element_is_named(io_tiny_model, tmp_path):
    atoms = Atoms("NH3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    atoms.calc = EquipotCalculator(str(io_tiny_model))
    with pytest.raises(UnknownElementError) as err:
        atoms.get_potential_energy()
    assert "element(s) N;" in str(err.value)
    assert "H, C, O" in str(err.value)
    path = tmp_path / "nh3.xyz"
    ase.io.write(str(path), [atoms])
    with pytest.raises(UnknownElementError, match="N"):
        evaluate_file(load_model(str(io_tiny_model)), str(path), progress=False)


def labelled_by_model(model_path, source_frames, path):
    """Structures labelled with the model's own predictions, read back as written."""
    ase.io.write(str(path), [Atoms(a.numbers, a.positions, cell=a.cell, pbc=a.pbc) for a in source_frames])
    frames = ase.io.read(str(path), ":")
    calc = EquipotCalculator(str(model_path), dtype="float64")
    out = []
    for atoms in frames:
        atoms.calc = calc
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.any():
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    ase.io.write(str(path), out)
    return out


def test_evaluate_self_labelled_data(io_tiny_model, io_demo_frames, tmp_path):
    crystal = Atoms("COH", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.7, 0.1]],
                    cell=[[3.6, 0, 0], [0.8, 3.4, 0], [0.3, 0.5, 3.8]], pbc=True)
    frames = labelled_by_model(io_tiny_model, list(io_demo_frames[:3]) + [crystal], tmp_path / "self.xyz")
    assert abs(frames[3].get_stress()).max() > 0  # the crystal carries a stress label
    model = load_model(str(io_tiny_model))
    out = tmp_path / "eval"
    summary = evaluate_file(model, str(tmp_path / "self.xyz"), out_dir=str(out), batch_size=3, progress=False)
    assert summary["n_structures"] == 4 and summary["n_atoms"] == 3 * 15 + 3
    for name in ("energy", "energy_per_atom", "forces", "stress"):
        assert summary[f"{name}_rmse"] < 1e-3, name  # meV units: only file rounding remains
    text = format_table(summary)
    assert "forces" in text and "4 structures, 48 atoms" in text
    write_json(str(out / "metrics.json"), summary)
    assert json.loads((out / "metrics.json").read_text()) == summary
    assert (out / "self_parity.png").read_bytes()[:8] == PNG
    assert matplotlib.image.imread(str(out / "self_parity.png")).ndim == 3
    predictions = ase.io.read(str(out / "self_predictions.xyz"), ":")
    assert len(predictions) == 4
    for ref, pred in zip(frames, predictions):
        assert pred.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(pred.get_forces(), ref.get_forces(), atol=1e-5)
        assert pred.info["REF_energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(pred.arrays["REF_forces"], ref.get_forces(), atol=1e-6)
        energies = pred.get_potential_energies()  # ASE reads the "energies" column into the calculator
        assert energies.shape == (len(ref),)
        assert energies.sum() == pytest.approx(pred.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(predictions[3].get_stress(), frames[3].get_stress(), atol=1e-6)
    # a model that is not the labelling model shows an error
    other = load_model(str(io_tiny_model))
    with torch.no_grad():
        next(other.energy_model.layers.parameters()).add_(0.5)
    assert evaluate_file(other, str(tmp_path / "self.xyz"), progress=False)["forces_rmse"] > 1.0


def test_committee_is_the_mean_of_its_models_with_their_spread(io_tiny_model, io_demo_frames, tmp_path):
    labelled_by_model(io_tiny_model, list(io_demo_frames[:3]), tmp_path / "self.xyz")
    configs = read_configurations(str(tmp_path / "self.xyz"))
    a, b = load_model(str(io_tiny_model)), load_model(str(io_tiny_model))
    with torch.no_grad():
        next(b.energy_model.layers.parameters()).add_(0.3)
    pa, pb, pc = predict(a, configs), predict(b, configs), committee_predict([a, b], configs)
    for x, y, c in zip(pa, pb, pc):
        assert c["energy"] == pytest.approx((x["energy"] + y["energy"]) / 2, abs=1e-12)
        np.testing.assert_allclose(c["forces"], (x["forces"] + y["forces"]) / 2, atol=1e-12)
        np.testing.assert_allclose(c["energies"], (x["energies"] + y["energies"]) / 2, atol=1e-12)
        # the spread of two: half their difference (per atom, the length of half the force difference)
        assert c["energy_std"] == pytest.approx(abs(x["energy"] - y["energy"]) / 2, abs=1e-12)
        assert c["energy_std"] > 1e-6
        np.testing.assert_allclose(c["forces_std"], np.linalg.norm(x["forces"] - y["forces"], axis=1) / 2, atol=1e-12)
    # a committee of one model twice is that model, with no spread
    for x, c in zip(pa, committee_predict([a, a], configs)):
        assert c["energy"] == pytest.approx(x["energy"], abs=1e-12) and c["energy_std"] == 0
        assert np.all(c["forces_std"] == 0)
    summary = evaluate_file([a, b], str(tmp_path / "self.xyz"), out_dir=str(tmp_path / "eval"), progress=False)
    assert summary["n_models"] == 2 and summary["mean_forces_std"] > 0
    assert summary["forces_rmse"] > 1e-3  # a labels a, b is off: the mean is not a
    written = ase.io.read(str(tmp_path / "eval" / "self_predictions.xyz"), ":")
    for atoms, c in zip(written, pc):
        assert atoms.info["pred_energy_std"] == pytest.approx(c["energy_std"], rel=1e-6)
        np.testing.assert_allclose(atoms.arrays["pred_forces_std"], c["forces_std"], atol=1e-7)
        np.testing.assert_allclose(atoms.get_forces(), c["forces"], atol=1e-6)
    # models with different outputs make no committee
    config = config_from_dict({"model": {**IO_TINY_MODEL, "outputs": {"q": "0e"}}}, "x").model
    species = species_of(configs)
    other = build_model(config, compute_statistics(configs, config.r_max, fit_e0(configs, species), species))
    with pytest.raises(CommitteeError, match="same outputs"):
        committee_predict([a, other], configs)


def test_calculator_committee_mean_spread_and_forces_of_the_mean_energy(io_tiny_model, io_demo_frames):
    a, b = load_model(str(io_tiny_model)), load_model(str(io_tiny_model))
    with torch.no_grad():
        next(b.energy_model.layers.parameters()).add_(0.3)
    box = Atoms("COH", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.7, 0.1]],
                cell=[[3.6, 0, 0], [0.8, 3.4, 0], [0.3, 0.5, 3.8]], pbc=True)
    for atoms in (io_demo_frames[0].copy(), box):
        single = []
        for m in (a, b):
            atoms.calc = EquipotCalculator(m)
            single.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress() if atoms.pbc.any() else None))
        atoms.calc = EquipotCalculator([a, b])
        assert atoms.get_potential_energy() == pytest.approx((single[0][0] + single[1][0]) / 2, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), (single[0][1] + single[1][1]) / 2, atol=1e-10)
        if atoms.pbc.any():
            np.testing.assert_allclose(atoms.get_stress(), (single[0][2] + single[1][2]) / 2, atol=1e-10)
        assert atoms.calc.get_property("energy_std", atoms) == pytest.approx(abs(single[0][0] - single[1][0]) / 2)
        np.testing.assert_allclose(atoms.calc.get_property("forces_std", atoms),
                                   np.linalg.norm(single[0][1] - single[1][1], axis=1) / 2, atol=1e-10)
    # the mean forces are minus the gradient of the mean energy (central differences, float64)
    atoms = io_demo_frames[0].copy()
    atoms.calc = EquipotCalculator([str(io_tiny_model), b])
    forces, h = atoms.get_forces(), 1e-4
    for i, k in ((0, 0), (3, 2)):
        shifted = atoms.copy()
        shifted.calc = atoms.calc
        shifted.positions[i, k] += h
        up = shifted.get_potential_energy()
        shifted.positions[i, k] -= 2 * h
        down = shifted.get_potential_energy()
        assert forces[i, k] == pytest.approx(-(up - down) / (2 * h), abs=1e-6)
    with pytest.raises(CommitteeError, match="dtype"):
        EquipotCalculator([a, load_model(str(io_tiny_model), dtype=torch.float32)])


# ----------------------------------------------------------------------------- molecular dynamics


def test_md_nve_and_nvt(io_tiny_model, io_small_xyz, tmp_path):
    nve = run_md(str(io_tiny_model), str(io_small_xyz), str(tmp_path / "nve"), ensemble="nve", steps=20,
                 interval=10, timestep_fs=0.25, dtype="float64", progress=False)
    assert nve.steps == 20
    frames = ase.io.read(nve.trajectory, ":")
    assert len(frames) == 3 and len(frames[0]) == 15
    assert not np.allclose(frames[0].positions, frames[-1].positions)
    lines = open(nve.log).read().splitlines()
    assert lines[0].startswith("# NVE") and len(lines) == 4
    table = np.loadtxt(nve.log)
    assert table.shape == (3, 5) and np.all(np.isfinite(table))
    np.testing.assert_allclose(table[:, 0], [0.0, 0.0025, 0.005], atol=1e-9)  # ps
    assert nve.energy_drift_meV_per_atom is not None and np.isfinite(nve.energy_drift_meV_per_atom)
    assert nve.energy_drift_meV_per_atom <= nve.max_energy_deviation_meV_per_atom
    assert nve.energy_drift_meV_per_atom == pytest.approx(1000 * abs(table[-1, 3] - table[0, 3]) / 15, abs=1e-3)
    assert nve.max_energy_deviation_meV_per_atom < 0.05  # forces = -dE/dr conserve energy (~1e-6 here)

    nvt = run_md(str(io_tiny_model), str(io_small_xyz), str(tmp_path / "nvt"), ensemble="nvt", steps=20,
                 interval=10, dtype="float64", progress=False)
    assert nvt.energy_drift_meV_per_atom is None
    assert len(ase.io.read(nvt.trajectory, ":")) == 3
    assert np.all(np.isfinite(np.loadtxt(nvt.log)))
    with pytest.raises(ValueError, match="ensemble"):
        run_md(str(io_tiny_model), str(io_small_xyz), str(tmp_path / "npt"), ensemble="npt", steps=1)


def test_float64_model_is_exact_whatever_the_default_dtype(tmp_path):
    """Constants made when a network is built (Clebsch–Gordan coefficients, the change of
    basis of a Cartesian polarizability) must not carry float32 rounding into a float64 model
    built or loaded while torch's default dtype is float32 (the usual case): its outputs are
    then equivariant to float64 rounding."""
    from equipot.config import ModelConfig, OutputConfig
    from equipot.data import Configuration, to_graph
    from equipot.data.statistics import Statistics
    from equipot.model import build_model

    assert torch.get_default_dtype() == torch.float32
    config = ModelConfig(r_max=3.0, num_layers=2, channels=4, lmax=2, parity="both", num_basis=4,
                         radial_hidden=[8], readout_hidden=4,
                         outputs={"alpha": OutputConfig(type="polarizability")})
    stats = Statistics(species=[1, 6, 8], e0={1: -1.0, 6: -2.0, 8: -3.0}, energy_shift=0.0, energy_scale=1.0,
                       avg_num_neighbors=4.0)
    torch.manual_seed(0)
    built = build_model(config, stats, dtype=torch.float64)
    save_model(str(tmp_path / "m.safetensors"), built, config, stats)
    loaded = load_model(str(tmp_path / "m.safetensors"))
    assert loaded.dtype == torch.float64
    # trained in float32 and evaluated in float64: the constants are rebuilt, not read from the file
    save_model(str(tmp_path / "m32.safetensors"), build_model(config, stats), config, stats)
    promoted = load_model(str(tmp_path / "m32.safetensors"), dtype=torch.float64)
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 3.0, (7, 3))
    numbers = np.array([1, 6, 8, 1, 6, 8, 1])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = -q if np.linalg.det(q) > 0 else q  # improper
    for model in (built, loaded, promoted):
        outs = [model(to_graph(Configuration(numbers, p, np.zeros((3, 3)), np.zeros(3, bool)), 3.0))
                for p in (positions, positions @ rotation.T)]
        r = torch.as_tensor(rotation)
        alpha, alpha_rot = outs[0]["alpha"].detach()[0], outs[1]["alpha"].detach()[0]
        assert float((alpha_rot - r @ alpha @ r.T).abs().max()) < 1e-13 * float(alpha.abs().max())
        forces, forces_rot = outs[0]["forces"].detach(), outs[1]["forces"].detach()
        assert float((forces_rot - forces @ r.T).abs().max()) < 1e-13 * float(forces.abs().max())


def test_model_files_hold_parameters_and_read_format_2(io_tiny_model, tmp_path):
    """Files hold the trained parameters only; format 2 files, which also held e3nn's
    constants (and the product kernels' of layers since replaced), still load, while a
    tensor that is neither a parameter nor such a constant is refused."""
    model = load_model(str(io_tiny_model))
    assert set(load_file(str(io_tiny_model))) == {name for name, _ in model.named_parameters()}
    old = dict(model.state_dict())
    old["energy_model.layers.0.conv._compiled_main_left_right._w3j_1_1_2"] = torch.zeros(3, 3, 5)
    old["energy_model.layers.0.conv.weight"] = torch.zeros(0)
    path = rewrite(io_tiny_model, tmp_path / "v2.safetensors", format_version="2", tensors=old)
    reloaded = load_model(path)
    for name, value in model.named_parameters():
        assert torch.equal(dict(reloaded.named_parameters())[name], value)
    with pytest.raises(ModelFileError, match="unexpected"):
        load_model(rewrite(io_tiny_model, tmp_path / "extra.safetensors", format_version="2",
                           tensors={**old, "energy_model.stowaway": torch.zeros(2)}))
