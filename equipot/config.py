"""Typed, validated configuration read from YAML.

Every section is a dataclass; an unknown key is an error that names the file, the key
and the closest known key. ``build_model`` (equipot.model.build) is the one place where
the model section reaches the network.
"""

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    train: str = ""
    valid: Optional[str] = None  # a file; otherwise valid_fraction of train, seeded
    valid_fraction: float = 0.1
    # files evaluated with the best model when the training ends (errors, parity plots, predictions
    # under output_dir/test; the metrics in output_dir/test_metrics.json)
    test: Union[str, List[str]] = field(default_factory=list)
    keys: Dict[str, str] = field(default_factory=lambda: {"energy": "energy", "forces": "forces", "stress": "stress"})
    energy_unit: str = "eV"
    length_unit: str = "Angstrom"
    e0s: Union[str, Dict[str, float]] = "fit"  # "fit", a file of isolated atoms, or {symbol: eV}
    max_train: Optional[int] = None


@dataclass
class OutputConfig:
    """A typed output (see :mod:`equipot.fields`); in YAML ``dipole: dipole`` is short for
    ``dipole: {type: dipole}``."""

    type: str
    level: Optional[str] = None  # "graph" or "node"; default from the type

    @classmethod
    def from_string(cls, value: str) -> "OutputConfig":
        return cls(type=value)


@dataclass
class LongRangeConfig:
    """Electrostatics of learnt charges (see :mod:`equipot.electrostatics`)."""

    method: str = "auto"  # auto (direct for molecules, Ewald, PME for large cells), direct, ewald, pme
    smearing: float = 1.0  # Å: pairs interact through erf(r / (√2 σ)) / r
    accuracy: float = 1e-4  # relative RMS error of the long-range forces (PME mesh, Ewald k-cutoff)
    pme_min_atoms: int = 150  # with auto: periodic structures with at least this many atoms use PME (faster from ~100 atoms here)


@dataclass
class ModelConfig:
    # "equivariant" (the O(3) network) or "cartesian": a non-equivariant baseline on the raw
    # components of r_ij, for measuring what symmetry buys (train it with augment_rotations)
    architecture: str = "equivariant"
    r_max: float = 5.0  # Å
    num_layers: int = 2
    channels: int = 32
    lmax: int = 2
    parity: str = "natural"  # "natural" (0e, 1o, 2e, ...) or "both" (0e, 0o, 1o, 1e, ...)
    correlation: int = 3  # body order per layer from A, A⊗A, A⊗A⊗A
    message_lmax: Optional[int] = None  # highest l of the features sent along edges (default lmax; 0: scalars only)
    # highest l of the edges' spherical harmonics (default lmax; MACE's max_ell): above lmax the
    # atomic basis A and its node products carry l up to sh_lmax inside each layer, and the
    # products land in the irreps up to lmax that the layer passes on
    sh_lmax: Optional[int] = None
    # each node product A ⊗ A' takes A' as a learnt channel mix of A, so that couplings odd in
    # the exchange of the factors (cross products 1o ⊗ 1o → 1e, triple products → 0o) survive
    product_mixing: bool = False
    num_basis: int = 8
    radial_hidden: List[int] = field(default_factory=lambda: [64, 64])
    readout_hidden: int = 16
    outputs: Dict[str, OutputConfig] = field(default_factory=dict)  # typed outputs besides the energy
    long_range: Optional[LongRangeConfig] = None  # electrostatics of learnt charges added to the energy
    charge_weights: str = "uniform"  # how the excess charge is spread: uniform, or learned positive weights
    # a dipole output is Σ q_i r_i plus learnt atomic dipoles Σ μ_i (1o); false: the charges
    # alone carry it, so that they are fixed by the dipole labels (point-charge models)
    atomic_dipoles: bool = True
    # the 0o (pseudoscalar) units of the output heads gated by the atom's 0e features, so that a
    # head can weigh atoms by their environment (see equipot.nn.heads.IrrepsHead)
    gate_odd_outputs: bool = False


LOSS_FORMS = ("mse", "sign")


@dataclass
class LossConfig:
    energy: float = 1.0  # weight of the per-atom energy MSE (eV/atom)^2
    forces: float = 100.0  # weight of the force-component MSE (eV/Å)^2
    stress: float = 0.0  # weight of the stress-component MSE (eV/Å³)^2
    outputs: Dict[str, float] = field(default_factory=dict)  # weight of each typed output's component MSE
    # the form of a typed output's term: "mse" (the default), or "sign" for a scalar output whose
    # label is a class by its sign (R/S as ±1, say): the logistic loss log(1 + exp(-y f)) with
    # y = sign(label), which asks for the right sign with a margin and not for the label's size
    forms: Dict[str, str] = field(default_factory=dict)

    def weight(self, name: str) -> float:
        """The weight of loss term ``name`` (energy, forces, stress or a typed output)."""
        return self.outputs[name] if name in self.outputs else getattr(self, name)


@dataclass
class StageTwoConfig:
    """The last part of a run with other loss weights (MACE's "SWA" stage): typically a larger
    energy weight once the forces have been learnt, meant to lower the energy error of a run
    near convergence (after 25 minutes on acac it changed little: docs/results.md). The best
    model is then chosen among the epochs of this stage only."""

    # where it starts: this fraction of max_minutes (when set) or of max_epochs, whichever is
    # reached first; with scheduler budget, of the budget of all runs together
    start: float = 0.75
    # weights that replace those of training.loss (energy, forces, stress, or a typed output's
    # name); the terms not named keep theirs. A term whose weight is 0 in training.loss cannot be
    # switched on here (its labels are read only for the terms of training.loss)
    loss: Dict[str, float] = field(default_factory=dict)
    lr: Optional[float] = None  # a constant learning rate for the stage (the scheduler stops); null: the schedule goes on

    def weights(self, base: LossConfig) -> LossConfig:
        """training.loss with this stage's weights in place."""
        named = {k: v for k, v in self.loss.items() if k in ("energy", "forces", "stress")}
        outputs = {**base.outputs, **{k: v for k, v in self.loss.items() if k not in named}}
        return dataclasses.replace(base, **named, outputs=outputs)


@dataclass
class TrainingConfig:
    dtype: str = "float32"
    device: str = "cpu"
    threads: Optional[int] = None
    batch_size: int = 5
    valid_batch_size: int = 20
    max_epochs: int = 100
    max_minutes: Optional[float] = None  # wall-clock limit of this run (scheduler budget: of all runs together)
    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 0.01
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # "plateau", "cosine" (over max_epochs), "budget" (cosine over max_minutes) or "none"
    lr_factor: float = 0.8
    lr_patience: int = 10
    ema_decay: Optional[float] = 0.99
    augment_rotations: bool = False  # rotate every training structure at random in every epoch
    compile: bool = False  # trace and compile the model's evaluation (equipot.model.compiled): faster steps after a compile of minutes (cached for later runs)
    patience: int = 50  # early stopping, in epochs without a better validation loss
    # fine-tuning: start from this model file's weights, configuration and statistics (the model
    # section may then be left out; keys written in it must agree with the file)
    init_from: Optional[str] = None
    # with init_from: the E0s of the model file ("model"), or new ones from data.e0s and this
    # training set ("data", for a new reference method), the per-species energy shifts moved by
    # the difference
    init_e0s: str = "model"
    loss: LossConfig = field(default_factory=LossConfig)
    stage_two: Optional[StageTwoConfig] = None  # other loss weights for the end of the run (StageTwoConfig)


@dataclass
class Config:
    output_dir: str = "run"
    seed: int = 1234
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_dict(cls, values: Any, where: str, source: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {where or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown config key {path!r}{hint}")
        kwargs[key] = _check_type(value, hints[key], path, source)
    return cls(**kwargs)


def _check_type(value: Any, kind: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is Union:
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and type(None) in args:  # Optional[X]: the error of X is the useful one
            return None if value is None else _check_type(value, options[0], path, source)
        for option in args:
            try:
                return _check_type(value, option, path, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {path} has value {value!r} of the wrong type (expected {kind})")
    if dataclasses.is_dataclass(kind):
        if isinstance(value, str) and hasattr(kind, "from_string"):
            return kind.from_string(value)
        return _from_dict(kind, value, path, source)
    if kind is type(None):
        if value is None:
            return None
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in (str, bool):
        if isinstance(value, kind):
            return value
    elif origin in (list, List):
        if isinstance(value, list):
            return [_check_type(v, args[0], f"{path}[{k}]", source) for k, v in enumerate(value)]
    elif origin in (dict, Dict):
        if isinstance(value, dict):
            return {str(k): _check_type(v, args[1], f"{path}.{k}", source) for k, v in value.items()}
    raise ConfigError(f"{source}: {path} has value {value!r} of the wrong type (expected {kind})")


def validate_model(m: "ModelConfig", source: str) -> None:
    """Range checks of a model section (also applied to model files when they are loaded)."""
    checks = [
        (m.r_max > 0, "model.r_max must be positive"),
        (1 <= m.num_layers <= 8, "model.num_layers must be between 1 and 8"),
        (1 <= m.channels <= 1024, "model.channels must be between 1 and 1024"),
        (0 <= m.lmax <= 3, "model.lmax must be between 0 and 3"),
        (m.parity in ("both", "natural"), "model.parity must be 'both' or 'natural'"),
        (1 <= m.correlation <= 3, "model.correlation must be 1, 2 or 3"),
        (m.message_lmax is None or 0 <= m.message_lmax <= m.lmax, "model.message_lmax must be between 0 and model.lmax"),
        (m.sh_lmax is None or 0 <= m.sh_lmax <= 6, "model.sh_lmax must be between 0 and 6"),
        (1 <= m.num_basis <= 64, "model.num_basis must be between 1 and 64"),
        (all(1 <= h <= 4096 for h in m.radial_hidden), "model.radial_hidden sizes must be between 1 and 4096"),
        (1 <= m.readout_hidden <= 4096, "model.readout_hidden must be between 1 and 4096"),
    ]
    if m.architecture not in ("equivariant", "cartesian"):
        raise ConfigError(f"{source}: model.architecture must be 'equivariant' or 'cartesian', got {m.architecture!r}")
    if m.architecture == "cartesian" and (m.outputs or m.long_range is not None):
        raise ConfigError(
            f"{source}: model.architecture 'cartesian' (the non-equivariant baseline) predicts energies, "
            "forces and stress only; remove model.outputs and model.long_range or use 'equivariant'"
        )
    if m.charge_weights not in ("uniform", "learned"):
        raise ConfigError(f"{source}: model.charge_weights must be 'uniform' or 'learned', got {m.charge_weights!r}")
    lr = m.long_range
    if lr is not None:
        checks += [
            (lr.method in ("auto", "direct", "ewald", "pme"), f"model.long_range.method must be auto, direct, ewald or pme, got {lr.method!r}"),
            (0.05 <= lr.smearing <= 10.0, "model.long_range.smearing must be between 0.05 and 10 Å"),
            (1e-12 <= lr.accuracy < 1.0, "model.long_range.accuracy must be in [1e-12, 1)"),
            (lr.pme_min_atoms >= 1, "model.long_range.pme_min_atoms must be positive"),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    output_fields(m, source)


def output_fields(m: "ModelConfig", source: str = "<config>") -> Dict[str, Any]:
    """{name: Field} of the model's typed outputs; each must be representable by its features."""
    from e3nn import o3

    from .fields import output_field

    fields = {}
    for name, out in m.outputs.items():
        try:
            f = output_field(name, out.type, out.level)
        except ValueError as err:
            raise ConfigError(f"{source}: model.outputs.{name}: {err}") from None
        optional = {(1, -1)} if f.kind == "dipole" else set()  # atomic dipoles join when lmax >= 1
        for _, ir in o3.Irreps(f.irreps):
            if (ir.l, ir.p) in optional:
                continue
            if ir.l > m.lmax:
                raise ConfigError(f"{source}: model.outputs.{name} ({out.type}) needs {ir} features: set model.lmax >= {ir.l}")
            if ir.p != (-1) ** ir.l and (m.parity != "both" or m.lmax < 1):
                raise ConfigError(
                    f"{source}: model.outputs.{name} ({out.type}) needs {ir} features, which only "
                    "model.parity: both with model.lmax >= 1 provides"
                )
        fields[name] = f
    dipoles = [n for n, f in fields.items() if f.kind == "dipole"]
    for name, f in fields.items():
        if f.kind == "born_charges" and len(dipoles) != 1:
            raise ConfigError(f"{source}: model.outputs.{name}: Born charges are derivatives of a dipole; declare one dipole output")
    if m.long_range is not None and not any(f.kind == "charges" for f in fields.values()):
        fields["charges"] = output_field("charges", "charges")  # the charges of the electrostatics
    return fields


def _validate(config: Config, source: str) -> None:
    from .units import ENERGY_TO_EV, LENGTH_TO_ANGSTROM

    validate_model(config.model, source)
    t, d, w = config.training, config.data, config.training.loss
    checks = [
        (d.energy_unit in ENERGY_TO_EV, f"data.energy_unit {d.energy_unit!r} is not one of {', '.join(ENERGY_TO_EV)}"),
        (d.length_unit in LENGTH_TO_ANGSTROM, f"data.length_unit {d.length_unit!r} is not one of {', '.join(LENGTH_TO_ANGSTROM)}"),
        (not ("stress" in d.keys and "virial" in d.keys), "data.keys maps both stress and virial; keep one"),
        (min([w.energy, w.forces, w.stress, *w.outputs.values()]) >= 0, "training.loss weights must not be negative"),
        (max([w.energy, w.forces, w.stress, *w.outputs.values()]) > 0, "training.loss: at least one weight must be positive"),
        (all(k in config.model.outputs for k in w.outputs),
         f"training.loss.outputs names {sorted(set(w.outputs) - set(config.model.outputs))}, "
         f"which model.outputs does not declare (declared: {sorted(config.model.outputs) or 'none'})"),
        (all(k in w.outputs for k in w.forms),
         f"training.loss.forms names {sorted(set(w.forms) - set(w.outputs))}, which training.loss.outputs does "
         f"not weigh (weighed: {sorted(w.outputs) or 'none'})"),
        (all(v in LOSS_FORMS for v in w.forms.values()),
         f"training.loss.forms: each form must be one of {', '.join(LOSS_FORMS)}; got {w.forms}"),
        (t.valid_batch_size >= 1, "training.valid_batch_size must be positive"),
        (not (t.compile and config.model.long_range is not None),
         "training.compile does not support model.long_range yet (the Ewald and PME meshes are sized from "
         "the cell's values); set training.compile: false"),
        (not (t.augment_rotations and config.model.outputs),
         "training.augment_rotations rotates energies, forces and stress only; it cannot be combined with model.outputs"),
        (t.ema_decay is None or 0.0 < t.ema_decay < 1.0, "training.ema_decay must be in (0, 1), or null for no EMA"),
        (t.max_epochs >= 1, "training.max_epochs must be positive"),
        (t.dtype in ("float32", "float64"), "training.dtype must be 'float32' or 'float64'"),
        (t.optimizer in ("adam", "adamw"), "training.optimizer must be 'adam' or 'adamw'"),
        (t.scheduler in ("plateau", "cosine", "budget", "none"), "training.scheduler must be plateau, cosine, budget or none"),
        (t.max_minutes is None or t.max_minutes > 0, "training.max_minutes must be positive, or null for no limit"),
        (t.scheduler != "budget" or t.max_minutes is not None,
         "training.scheduler 'budget' decays the learning rate over training.max_minutes; set max_minutes"),
        (t.batch_size >= 1, "training.batch_size must be positive"),
        (t.init_e0s in ("model", "data"), "training.init_e0s must be 'model' or 'data'"),
        (t.init_from is not None or t.init_e0s == "model",
         "training.init_e0s: 'data' moves the E0s of a model given by training.init_from; set init_from"),
        (t.init_from is None or t.init_e0s == "data" or d.e0s == "fit",
         "data.e0s is given, but training.init_from keeps the model file's E0s; set training.init_e0s: data "
         "to use these"),
        (t.lr > 0, "training.lr must be positive"),
        (0.0 < config.data.valid_fraction < 1.0 or config.data.valid, "data.valid_fraction must be in (0, 1)"),
        (all(k in ("energy", "forces", "stress", "virial", "total_charge") or k in config.model.outputs for k in config.data.keys),
         f"data.keys may map energy, forces, stress, virial, total_charge and the names in model.outputs; "
         f"got {sorted(config.data.keys)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")
    if t.stage_two is not None:
        _validate_stage_two(t.stage_two, w, source)
    fields = output_fields(config.model, source)
    for name, key in config.data.keys.items():  # VALUE@SITE: per-structure values placed on indexed atoms
        if "@" in key and w.forms.get(name) == "sign":
            raise ConfigError(f"{source}: data.keys.{name}: {key!r} labels the other atoms 0, which the sign form "
                              f"leaves untrained (a zero label has no gradient there); use the mse form")
    for name, form in w.forms.items():
        if form == "sign" and fields[name].shape != ():
            raise ConfigError(f"{source}: training.loss.forms.{name}: the sign form needs a scalar output (one "
                              f"number per {'structure' if fields[name].level == 'graph' else 'atom'}); "
                              f"{name} has shape {fields[name].shape}")


def _validate_stage_two(s: StageTwoConfig, w: LossConfig, source: str) -> None:
    terms = ["energy", "forces", "stress", *w.outputs]
    for name, weight in s.loss.items():
        if name not in terms:
            close = difflib.get_close_matches(name, terms, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: training.stage_two.loss.{name}: not a loss term (terms: "
                              f"{', '.join(terms)}){hint}")
        if weight < 0:
            raise ConfigError(f"{source}: training.stage_two.loss.{name} must not be negative, got {weight}")
        if weight > 0 and w.weight(name) <= 0:
            base = f"training.loss.{'outputs.' if name in w.outputs else ''}{name}"
            raise ConfigError(f"{source}: training.stage_two.loss.{name} is positive but {base} is 0: a "
                              f"term cannot be switched on in stage two (its labels are read for the terms of "
                              f"training.loss); give it a small weight in training.loss")
    checks = [
        (0.0 < s.start < 1.0, f"training.stage_two.start must be in (0, 1) (a fraction of the run), got {s.start}"),
        (max(s.weights(w).weight(n) for n in terms) > 0, "training.stage_two.loss: at least one weight must stay positive"),
        (s.lr is None or s.lr > 0, "training.stage_two.lr must be positive, or null to keep the schedule"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{source}: {message}")


def config_from_dict(values: dict, source: str = "<config>") -> Config:
    values = dict(values or {})
    training = values.get("training")
    init_from = training.get("init_from") if isinstance(training, dict) else None
    if init_from is not None:
        values["model"] = _model_of_file(init_from, values.get("model"), source)
    config = _from_dict(Config, values, "", source)
    _validate(config, source)
    return config


def _model_of_file(path: Any, written: Any, source: str) -> dict:
    """The model section of a fine-tuning run: that of the model file ``path``, with which every
    key written in the config's own model section must agree."""
    from .model.model_file import ModelFileError, read_model_file  # the model package reads this module

    if not isinstance(path, str):
        raise ConfigError(f"{source}: training.init_from must be the path of a model file, got {path!r}")
    try:
        _, from_file, _, _ = read_model_file(path)
    except ModelFileError as err:
        raise ConfigError(f"{source}: training.init_from: {err}") from None
    values = dataclasses.asdict(from_file)
    if written is None:
        return values
    if not isinstance(written, dict):
        raise ConfigError(f"{source}: model must be a mapping, got {type(written).__name__}")
    mine = dataclasses.asdict(_from_dict(ModelConfig, {**values, **written}, "model", source))
    differ = [k for k in written if mine[k] != values[k]]
    if differ:
        raise ConfigError(
            f"{source}: training.init_from: {path} was trained with "
            + ", ".join(f"model.{k} = {values[k]!r}" for k in differ)
            + ", which the config's model section changes ("
            + ", ".join(f"{mine[k]!r}" for k in differ)
            + "); a fine-tuned model keeps the architecture of the file: leave these keys out")
    return values


def load_config(path: str) -> Config:
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(values, path)
