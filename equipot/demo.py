"""`equipot demo`: train, evaluate and run MD on the acetylacetone data shipped in the package."""

import os
from importlib import resources

import yaml

from .config import config_from_dict
from .evaluate import evaluate_file, format_table, write_json
from .md import run_md
from .model import load_model
from .train import MODEL, Trainer


def demo_data_dir() -> str:
    return str(resources.files("equipot.demo_data"))


def run_demo(out_dir: str = "equipot-demo", max_minutes: float = 4.0, md_steps: int = 400) -> dict:
    data = demo_data_dir()
    with open(os.path.join(data, "demo.yaml")) as f:
        values = yaml.safe_load(f)
    values["output_dir"] = os.path.join(out_dir, "train")
    values["data"]["train"] = os.path.join(data, values["data"]["train"])
    values["data"]["e0s"] = os.path.join(data, values["data"]["e0s"])
    values["training"]["max_minutes"] = max_minutes
    config = config_from_dict(values, "demo.yaml")
    print(f"[1/3] training a small model on {values['data']['train']} (at most {max_minutes:g} min)")
    Trainer(config).run()
    model_path = os.path.join(config.output_dir, MODEL)
    model = load_model(model_path)
    print("[2/3] evaluating on held-out acetylacetone structures")
    eval_dir = os.path.join(out_dir, "eval")
    test_path = os.path.join(data, "acac_test.xyz")
    summary = evaluate_file(model, test_path, out_dir=eval_dir)
    write_json(os.path.join(eval_dir, "metrics.json"), summary)
    print(format_table(summary))
    print(f"[3/3] NVE molecular dynamics, {md_steps} steps of 0.5 fs, float64")
    md = run_md(model_path, test_path, os.path.join(out_dir, "md"), ensemble="nve",
                timestep_fs=0.5, temperature_K=300.0, steps=md_steps, dtype="float64")
    print(f"NVE energy drift: {md.energy_drift_meV_per_atom:.3f} meV/atom over {md_steps * 0.5 / 1000:g} ps")
    print("\nResults:")
    for label, path in [
        ("model file", model_path),
        ("metrics per epoch", os.path.join(config.output_dir, "metrics.csv")),
        ("learning curve", os.path.join(config.output_dir, "learning_curve.png")),
        ("test errors", os.path.join(eval_dir, "metrics.json")),
        ("parity plot", os.path.join(eval_dir, "acac_test_parity.png")),
        ("predictions", os.path.join(eval_dir, "acac_test_predictions.xyz")),
        ("MD trajectory", md.trajectory),
        ("MD log", md.log),
    ]:
        print(f"  {label:<18} {path}")
    return {"summary": summary, "md": md}
