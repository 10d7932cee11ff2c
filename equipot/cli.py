"""The `equipot` command line: train, eval, md, convert, demo."""

import argparse
import sys

from .config import ConfigError


def _train(args) -> None:
    from .config import load_config
    from .train import Trainer

    config = load_config(args.config)
    trainer = Trainer(config, progress=not args.quiet)
    try:
        result = trainer.run(resume=args.resume, overwrite=args.overwrite)
    finally:
        trainer.world.close()
    print(f"training stopped ({result['stop_reason']}) after {result['epochs']} epochs; "
          f"best model: {config.output_dir}/model.safetensors")


def _eval(args) -> None:
    import torch

    from .evaluate import evaluate_file, format_table, write_json
    from .model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [load_model(path, dtype=getattr(torch, args.dtype) if args.dtype else None) for path in args.models]
    model = models[0]
    keys = {"energy": args.energy_key, "forces": args.forces_key, "stress": args.stress_key}
    keys.update({name: name for name in model.output_fields})
    for item in args.key or []:
        name, sep, key = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"equipot eval: --key wants NAME=KEY, got {item!r}")
        if name not in keys and name != "total_charge":
            known = ", ".join(list(keys) + ["total_charge"])
            raise SystemExit(f"equipot eval: --key {item!r}: this model has no output {name!r} (known: {known})")
        keys[name] = key
    summary = evaluate_file(models, args.data, out_dir=args.out, keys=keys, energy_unit=args.energy_unit,
                            length_unit=args.length_unit, batch_size=args.batch_size, by=args.by)
    print(format_table(summary, {name: f.unit for name, f in model.output_fields.items()}))
    if args.json:
        write_json(args.json, summary)
    if args.out:
        print(f"parity plot and predictions in {args.out}")


def _md(args) -> None:
    import torch

    from .md import run_md

    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models if len(args.models) > 1 else args.models[0]  # several: a committee
    result = run_md(models, args.structure, args.out, ensemble=args.ensemble, timestep_fs=args.timestep_fs,
                    temperature_K=args.temperature_K, steps=args.steps, interval=args.interval, dtype=args.dtype,
                    total_charge=args.total_charge, compile=args.compile,
                    tabulate=False if args.no_tabulate else None)
    print(f"trajectory: {result.trajectory}\nlog: {result.log}")
    if result.energy_drift_meV_per_atom is not None:
        print(f"NVE energy drift: {result.energy_drift_meV_per_atom:.4f} meV/atom "
              f"(max deviation {result.max_energy_deviation_meV_per_atom:.4f} meV/atom)")
    if result.max_forces_std is not None:
        print(f"committee: largest spread of an atom's force {result.max_forces_std:.4f} eV/Å (per frame in the log)")


def _convert(args) -> None:
    from tqdm import tqdm

    from .config import load_config, output_fields
    from .data.reading import iread_configurations
    from .data.store import write_store
    from .train.setup import required_fields

    config = load_config(args.config)
    d = config.data
    source = args.input or d.train
    if not source:
        raise ConfigError(f"{args.config}: data.train is not set and no --input was given")
    fields = output_fields(config.model)
    configs = iread_configurations(source, keys=d.keys, required=required_fields(config), energy_unit=d.energy_unit,
                                   length_unit=d.length_unit, fields=fields)
    n = write_store(tqdm(configs, desc="converting", unit=" structures", disable=args.quiet), args.output,
                    fields=fields, source=source)
    print(f"{n} structures from {source} stored in {args.output}; name it as data.train (or data.valid) to train from it")


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, max_minutes=args.minutes, md_steps=args.md_steps)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="equipot", description="E(3)-equivariant interatomic potentials")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUTPUT_DIR")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="errors, parity plots and predictions of a model on a data file")
    e.add_argument("models", nargs="+", metavar="model",
                   help="a model file; several: a committee, evaluated by the mean of their predictions, "
                        "with its spread (pred_energy_std, pred_forces_std) in the predictions file")
    e.add_argument("data")
    e.add_argument("--json", help="write the metrics as JSON here")
    e.add_argument("--out", help="folder for the parity plot and the predictions (extxyz)")
    e.add_argument("--energy-key", default="energy")
    e.add_argument("--forces-key", default="forces")
    e.add_argument("--stress-key", default="stress")
    e.add_argument("--key", action="append", metavar="NAME=KEY",
                   help="file key of a typed output or of total_charge (default: the output's name)")
    e.add_argument("--energy-unit", default="eV")
    e.add_argument("--length-unit", default="Angstrom")
    e.add_argument("--batch-size", type=int, default=20)
    e.add_argument("--by", metavar="KEY",
                   help="also the errors of each group of structures by this per-structure key (config_type, say)")
    e.add_argument("--dtype", choices=["float32", "float64"])
    e.add_argument("--threads", type=int)
    e.set_defaults(func=_eval)

    m = sub.add_parser("md", help="molecular dynamics through ASE")
    m.add_argument("models", nargs="+", metavar="model",
                   help="a model file; several: a committee, its mean driving the MD and its force spread logged")
    m.add_argument("structure", help="any ASE-readable file; its first frame is used")
    m.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    m.add_argument("--timestep-fs", type=float, default=0.5)
    m.add_argument("--temperature-K", type=float, default=300.0)
    m.add_argument("--steps", type=int, default=1000)
    m.add_argument("--interval", type=int, default=10, help="steps between trajectory frames")
    m.add_argument("--total-charge", type=float, help="total charge in e (default: the file's total_charge, else 0)")
    m.add_argument("--dtype", choices=["float32", "float64"])
    m.add_argument("--threads", type=int)
    m.add_argument("--out", default="md")
    m.add_argument("--compile", action="store_true",
                   help="trace and compile the model first (minutes; cached for later runs): faster steps for long runs")
    m.add_argument("--no-tabulate", action="store_true",
                   help="with --compile and float32: the radial networks instead of their tables (within 1e-7 of them, faster)")
    m.set_defaults(func=_md)

    c = sub.add_parser("convert", help="store a data file as HDF5 for training that reads structures on demand")
    c.add_argument("config", help="training config: its data.keys, units and outputs say what to read")
    c.add_argument("output", help="the store to write (.h5)")
    c.add_argument("--input", help="file to convert (default: the config's data.train)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_convert)

    d = sub.add_parser("demo", help="train, evaluate and run MD on the shipped demo data")
    d.add_argument("--out", default="equipot-demo")
    d.add_argument("--minutes", type=float, default=4.0, help="training wall-clock limit")
    d.add_argument("--md-steps", type=int, default=400)
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .data import CloseAtomsError, DataError
    from .evaluate import CommitteeError
    from .model import ModelFileError, UnknownElementError
    from .train import CheckpointError

    try:
        args.func(args)
    except (ConfigError, DataError, CloseAtomsError, ModelFileError, UnknownElementError, CheckpointError,
            CommitteeError, FileNotFoundError) as err:
        print(f"equipot: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
