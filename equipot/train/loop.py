"""The training loop: `equipot train CONFIG.yaml`.

Everything that changes during training (weights, EMA, optimiser, scheduler, the data
order's random state, the history) is checkpointed atomically at the end of every epoch,
so ``resume=True`` continues exactly where a killed run left off. Work is split over a
:class:`World` of processes; only its main process writes files.
"""

import dataclasses
import json
import math
import os
import time
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ..config import Config, ConfigError, _from_dict, output_fields
from ..data import GraphLoader
from ..data.statistics import Statistics
from ..model import build_model, load_model, save_model
from ..model.compiled import CompiledPotential
from ..model.model_file import rebuilt_constant
from .augment import random_rotations, rotate_graph
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA
from .history import write_history
from .loss import combine, loss_names, squared_error_terms
from .metrics import ErrorAccumulator
from .setup import (fine_tuning_start, label_coverage, read_splits, required_fields, test_files,
                    training_statistics)
from .world import World

CHECKPOINT = "checkpoint.pt"
PLOT_INTERVAL_S = 60.0  # the learning curve is redrawn at most this often (and at the end)
MODEL = "model.safetensors"  # the weights (EMA ones when training.ema_decay) of the best validation loss
LAST_MODEL = "model_last.safetensors"  # the same, after the latest epoch: for a validation set that cannot pick


class Trainer:
    def __init__(self, config: Config, world: Optional[World] = None, progress: bool = True):
        self.config = config
        self.world = world or World(config.training.device)
        self.progress = progress and self.world.is_main
        self.out = config.output_dir
        self.dtype = getattr(torch, config.training.dtype)
        self.device = self.world.device

    # ----------------------------------------------------------------- set-up
    def _setup(self, resume: bool, overwrite: bool = False) -> Optional[dict]:
        t = self.config.training
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(self.config.seed)
        checkpoint = os.path.join(self.out, CHECKPOINT)
        if not resume and not overwrite and os.path.exists(checkpoint):
            raise ConfigError(
                f"output_dir {self.out} already holds a training run ({CHECKPOINT}); "
                "use --resume to continue it or --overwrite to start again"
            )
        state = load_checkpoint(checkpoint) if resume else None
        if state is not None:
            # the saved config with today's defaults for keys added since it was written
            saved = _from_dict(Config, json.loads(state["config"]), "", checkpoint).to_dict()
            check_resumable(saved, self.config.to_dict(), checkpoint)
        self.splits = read_splits(self.config)
        if state is not None:  # its weights come with the rest of the state (_load_state)
            self.stats = Statistics.from_dict(json.loads(state["statistics"]))
            self.model = build_model(self.config.model, self.stats, self.dtype)
        elif t.init_from is not None:
            self.model, self.stats = fine_tuning_start(self.config, self.splits, self.dtype)
        else:
            self.stats = training_statistics(self.config, self.splits.train)
            self.model = build_model(self.config.model, self.stats, self.dtype)
        self.model = self.model.to(self.device)
        self._scalar_outputs = [n for n, f in output_fields(self.config.model).items() if f.shape == ()]
        # what evaluates a batch: the model, or (training.compile) its traced and compiled graph
        self.evaluate = self.model if not t.compile else CompiledPotential(self.model)
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay else None
        r_max = self.config.model.r_max
        # the labels of the loss are in every batch, NaN on structures without them
        labels = ["stress" if name == "virial" else name for name in required_fields(self.config)]
        self.train_loader = GraphLoader(
            self.splits.train, r_max, t.batch_size, shuffle=True, seed=self.config.seed,
            rank=self.world.rank, world_size=self.world.size, labels=labels,
        )
        self.valid_loader = GraphLoader(
            self.splits.valid, r_max, t.valid_batch_size, rank=self.world.rank, world_size=self.world.size,
            labels=labels,
        )
        self.epoch, self.best_loss, self.bad_epochs, self.history = 0, math.inf, 0, []
        self.stage_two = False  # in training.stage_two's part of the run
        if state is not None:
            self._load_state(state)
        return state

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.config.training
        cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        # no weight decay on the energy shift (E0 ~ -10^3 eV) nor on the Bessel frequencies
        exempt = [p for n, p in self.model.named_parameters() if n.endswith(("atomic_shift", "freqs"))]
        exempt_ids = {id(p) for p in exempt}
        decayed = [p for p in self.model.parameters() if id(p) not in exempt_ids]
        groups = [{"params": decayed, "weight_decay": t.weight_decay}, {"params": exempt, "weight_decay": 0.0}]
        return cls(groups, lr=t.lr)

    def _scheduler(self):
        t = self.config.training
        if t.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, factor=t.lr_factor, patience=t.lr_patience)
        if t.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=t.max_epochs)
        return None  # "none", and "budget", which sets the rate itself at every step (_budget_lr)

    def _budget_lr(self, step: int, steps: int) -> None:
        """scheduler "budget": cosine decay from lr to 0 over the wall-clock budget max_minutes.

        The fraction of the budget spent is the main process's clock at the start of the epoch
        plus, step by step, the share of the epoch done at the pace of the previous epoch, so
        every process sets the same rate without a message per step.
        """
        start, per_epoch = self._budget_pace
        fraction = min(start + per_epoch * step / max(steps, 1), 1.0)
        lr = 0.5 * self.config.training.lr * (1.0 + math.cos(math.pi * fraction))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _elapsed(self, start: float, before: float) -> float:
        """Seconds of training so far (every run of this training, resumed ones included) by the
        main process's clock, the same number on every process: stop decisions cannot differ."""
        mine = before + time.time() - start if self.world.is_main else 0.0
        return float(self.world.sum(torch.tensor([mine], dtype=torch.float64))[0])

    # --------------------------------------------------------------- state
    def _state(self) -> dict:
        return {
            "format": "equipot-checkpoint",
            "config": json.dumps(self.config.to_dict()),
            "statistics": json.dumps(self.stats.to_dict()),
            "epoch": self.epoch,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
            "stage_two": self.stage_two,
            "history": json.dumps(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "ema": self.ema.state_dict() if self.ema else {},
            "train_loader": self.train_loader.state_dict(),
        }

    def _load_state(self, state: dict) -> None:
        # a checkpoint written while a layer used an e3nn product holds that product's constants
        # (output masks, an empty weight); the kernel that replaced it rebuilds what it needs
        current = self.model.state_dict()
        saved = {k: v for k, v in state["model"].items() if k in current or not rebuilt_constant(k, v, current)}
        try:
            self.model.load_state_dict(saved)
        except RuntimeError as err:
            raise CheckpointError(f"the checkpoint's weights do not fit the model of this config: {err}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.train_loader.load_state_dict(state["train_loader"])
        self.epoch, self.best_loss = int(state["epoch"]), float(state["best_loss"])
        self.bad_epochs, self.history = int(state["bad_epochs"]), json.loads(state["history"])
        self.stage_two = bool(state.get("stage_two", False))  # absent from checkpoints written before it existed

    # --------------------------------------------------------------- stage two
    def _weights(self):
        """The loss weights of this part of the run: training.loss, or stage two's."""
        t = self.config.training
        return t.stage_two.weights(t.loss) if self.stage_two else t.loss

    def _fixed_lr(self) -> bool:
        """Stage two with a learning rate of its own: the scheduler no longer sets it."""
        return self.stage_two and self.config.training.stage_two.lr is not None

    def _maybe_start_stage_two(self, run_fraction: float) -> None:
        """Enter stage two once ``start`` of the run is spent: of max_epochs, or of max_minutes
        (``run_fraction``, the same on every process), whichever comes first. Decided at the start
        of an epoch, so a run resumed from a checkpoint decides as the uninterrupted run did."""
        t = self.config.training
        if t.stage_two is None or self.stage_two:
            return
        if max(self.epoch / t.max_epochs, run_fraction) < t.stage_two.start:
            return
        self.stage_two = True
        # the validation loss has other weights now: the best model is chosen in this stage only
        self.best_loss, self.bad_epochs = math.inf, 0
        if t.stage_two.lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = t.stage_two.lr
        elif isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler = self._scheduler()  # its record of the best loss belongs to the old weights
        if self.progress:
            weights = ", ".join(f"{k} {v:g}" for k, v in t.stage_two.loss.items()) or "unchanged"
            tqdm.write(f"stage two from epoch {self.epoch + 1}: loss weights {weights}"
                       + (f", lr {t.stage_two.lr:g}" if t.stage_two.lr is not None else ""))

    # --------------------------------------------------------------- epochs
    def _global_counts(self, terms) -> Dict[str, torch.Tensor]:
        names = loss_names(self._weights())
        zero = torch.zeros((), dtype=torch.float64)
        counts = self.world.sum(torch.stack([terms[n][1] if n in terms else zero for n in names]))
        return dict(zip(names, counts))

    def _train_epoch(self, bar) -> float:
        self.model.train()
        weights, total, n = self._weights(), 0.0, 0
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        budget = self.config.training.scheduler == "budget" and not self._fixed_lr()
        for step, graph in enumerate(self.train_loader):
            if budget:
                self._budget_lr(step, len(self.train_loader))
            self.optimizer.zero_grad(set_to_none=True)
            if graph is None:  # no share of this batch: take part in the reductions with zeros
                self._global_counts({})
                loss = None
            else:
                graph = graph.to(self.device, self.dtype)
                if self.config.training.augment_rotations:
                    graph = self._rotated(graph, n)
                terms = squared_error_terms(self.evaluate(graph, training=True), graph, weights)
                loss = combine(terms, self._global_counts(terms), weights)
                loss.backward()
            # the loss of the global batch (the processes' parts summed) rides with the gradients
            part = float(loss.detach()) if loss is not None else 0.0
            total, n = total + self.world.sum_gradients(parameters, extra=part), n + 1
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / n:.4g}")
        return total / max(n, 1)

    def _rotated(self, graph, step: int):
        """The batch with every structure randomly rotated; the rotations depend only on the
        seed, epoch, step and process, so a resumed run draws the same ones."""
        g = torch.Generator().manual_seed(
            hash((self.config.seed, self.epoch, step, self.world.rank)) & 0x7FFFFFFFFFFFFFFF)
        return rotate_graph(graph, random_rotations(graph.n_graphs, g).to(self.device))

    def _validate(self) -> Dict[str, float]:
        self.model.eval()
        weights = self._weights()
        acc, sums = ErrorAccumulator(), {}
        for graph in self.valid_loader:
            if graph is None:
                continue
            graph = graph.to(self.device, self.dtype)
            pred = self.evaluate(graph)
            for name, (sq, count) in squared_error_terms(pred, graph, weights).items():
                s, c = sums.get(name, (0.0, 0.0))
                sums[name] = (s + float(sq.detach()), c + float(count))
            acc.add_batch(
                {k: v.detach().cpu().double().numpy() for k, v in pred.items()},
                {k: v.cpu().double().numpy() for k, v in graph.targets.items()},
                graph.atoms_per_graph().cpu().numpy(),
                self._scalar_outputs,
            )
        names = loss_names(weights)
        flat = self.world.sum(torch.tensor([x for n in names for x in sums.get(n, (0.0, 0.0))], dtype=torch.float64))
        loss = sum(weights.weight(n) * flat[2 * k] / max(float(flat[2 * k + 1]), 1.0) for k, n in enumerate(names))
        summary = acc.summary() if not self.world.distributed else self._reduce_summary(acc)
        return {"valid_loss": float(loss), **{f"valid_{k}": v for k, v in summary.items()}}

    def _reduce_summary(self, acc: ErrorAccumulator) -> Dict[str, float]:
        acc.extend(self.world.union(list(acc.sums)))  # the same quantities on every process
        acc.load_state(self.world.sum(torch.tensor(acc.state(), dtype=torch.float64)).numpy())
        return acc.summary()

    # --------------------------------------------------------------- run
    def run(self, resume: bool = False, overwrite: bool = False) -> Dict[str, float]:
        """Train; ``resume`` continues from the checkpoint, ``overwrite`` replaces an earlier run."""
        self._setup(resume, overwrite)
        t, start = self.config.training, time.time()
        # wall_s counts the training time of every run so far (a resumed run goes on from it);
        # max_minutes limits this run (with the budget schedule: all runs together)
        elapsed_before = float(self.history[-1]["wall_s"]) if self.history else 0.0
        if self.world.is_main:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.yaml"), "w") as f:
                yaml.safe_dump(self.config.to_dict(), f, sort_keys=False)
        stop_reason, last_plot = "max_epochs", -math.inf
        budget_s = 60 * t.max_minutes if t.max_minutes is not None else math.inf
        fraction = self._elapsed(start, elapsed_before) / budget_s
        self._budget_pace = (fraction, 0.0)  # the first epoch's pace is not known yet
        # the spent share of what limits this run's time (the budget schedule: of all runs)
        run_fraction = fraction if t.scheduler == "budget" else 0.0
        if self.progress and self.world.is_main:
            for split, configs in (("training", self.splits.train), ("validation", self.splits.valid)):
                partial = {n: k for n, k in label_coverage(configs, required_fields(self.config)).items()
                           if k < len(configs)}
                if partial:  # structures without a label leave it out of the loss and the metrics
                    tqdm.write(f"labels on some {split} structures only: " + ", ".join(
                        f"{n} on {k} of {len(configs)}" for n, k in partial.items()))
        if t.compile and self.progress:
            tqdm.write("training.compile: the first step traces and compiles the model (minutes, less when "
                       "Inductor's cache already holds this architecture)")
        while self.epoch < t.max_epochs:
            if t.scheduler == "budget" and fraction >= 1.0:
                stop_reason = "wall_clock"  # a resumed run whose budget was already spent
                break
            self._maybe_start_stage_two(run_fraction)
            bar = tqdm(total=len(self.train_loader), desc=f"epoch {self.epoch + 1}/{t.max_epochs}",
                       leave=False, disable=not self.progress)
            train_loss = self._train_epoch(bar)
            bar.close()
            if self.ema:
                self.ema.swap(self.model)
            metrics = self._validate()
            improved = metrics["valid_loss"] < self.best_loss
            if self.world.is_main:
                for name in (MODEL, LAST_MODEL) if improved else (LAST_MODEL,):
                    save_model(os.path.join(self.out, name), self.model, self.config.model, self.stats)
            if self.ema:
                self.ema.swap(self.model)
            self._step_scheduler(metrics["valid_loss"])
            self.epoch += 1
            self.best_loss = min(self.best_loss, metrics["valid_loss"])
            self.bad_epochs = 0 if improved else self.bad_epochs + 1
            row = {"epoch": self.epoch, "wall_s": round(elapsed_before + time.time() - start, 3),
                   "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss, **metrics}
            if t.stage_two is not None:
                row["stage"] = 2 if self.stage_two else 1
            self.history.append(row)
            if self.world.is_main:
                save_checkpoint(os.path.join(self.out, CHECKPOINT), self._state())
                plot = time.time() - last_plot > PLOT_INTERVAL_S
                write_history(self.out, self.history, plot=plot)
                last_plot = time.time() if plot else last_plot
                if self.progress:
                    tqdm.write(_epoch_line(row))
            if self.bad_epochs >= t.patience:
                stop_reason = "early_stopping"
                break
            elapsed = self._elapsed(start, elapsed_before)
            self._budget_pace = (elapsed / budget_s, elapsed / budget_s - fraction)
            fraction = elapsed / budget_s
            # the budget schedule spends max_minutes over all runs of the training (a resumed
            # run finishes the same schedule); otherwise max_minutes limits this run
            this_run = elapsed if t.scheduler == "budget" else elapsed - elapsed_before
            run_fraction = this_run / budget_s
            if this_run > budget_s:
                stop_reason = "wall_clock"
                break
        if self.world.is_main:
            write_history(self.out, self.history)  # the final learning curve
        self.world.barrier()
        if self.world.is_main:  # after the barrier: the other processes need not wait for it
            try:
                self._test()
            except Exception as err:  # the trained model is saved; a bad test file must not lose the run
                warnings.warn(f"data.test: evaluation failed ({type(err).__name__}: {err}); the model is in "
                              f"{os.path.join(self.out, MODEL)}, evaluate it with equipot eval", stacklevel=2)
        return {"stop_reason": stop_reason, "epochs": self.epoch, "best_valid_loss": self.best_loss}

    def _test(self) -> None:
        """data.test: each file evaluated with the best model (as ``equipot eval`` would)."""
        d = self.config.data
        files = test_files(self.config)
        if not files or not os.path.isfile(os.path.join(self.out, MODEL)):
            return
        from ..evaluate import evaluate_file, format_table, write_json

        model = load_model(os.path.join(self.out, MODEL), dtype=self.dtype, device=self.device)
        keys = dict(d.keys, **{name: d.keys.get(name, name) for name in model.output_fields})
        results = {}
        stems = [os.path.splitext(os.path.basename(path))[0] for path in files]
        for k, path in enumerate(files):
            # files of one name (in different folders) each get their own folder of plots
            folder = os.path.join(self.out, "test") if stems.count(stems[k]) == 1 else os.path.join(self.out, "test", str(k))
            summary = evaluate_file(model, path, out_dir=folder, keys=keys,
                                    energy_unit=d.energy_unit, length_unit=d.length_unit,
                                    batch_size=self.config.training.valid_batch_size, progress=self.progress)
            results[path] = summary
            if self.progress:
                tqdm.write(f"test: {path}\n" + format_table(summary, {n: f.unit for n, f in model.output_fields.items()}))
        write_json(os.path.join(self.out, "test_metrics.json"), results)

    def _step_scheduler(self, valid_loss: float) -> None:
        if self._fixed_lr():
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(valid_loss)
        elif self.scheduler is not None:
            self.scheduler.step()


# settings that may change when a run is resumed; any other change would make the resumed
# run a different run from the one the checkpoint belongs to
RESUME_MAY_CHANGE = {"output_dir", "training.max_epochs", "training.max_minutes", "training.patience",
                     "training.threads", "training.device", "training.compile", "data.test"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k not in ("keys", "e0s") else {key: v})
    return out


def check_resumable(saved: dict, current: dict, path: str) -> None:
    a, b = _flatten(saved), _flatten(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_MAY_CHANGE)
    if changed:
        details = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"{path}: the config differs from the one this checkpoint was trained with ({details}); "
            f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may change on --resume"
        )


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:4d}", f"loss {row['train_loss']:.4g}", f"valid {row['valid_loss']:.4g}"]
    for key, label in (("valid_energy_per_atom_rmse", "E"), ("valid_forces_rmse", "F"), ("valid_stress_rmse", "S")):
        if key in row:
            parts.append(f"{label} RMSE {row[key]:.2f}")
    parts.append(f"lr {row['lr']:.2g}")
    return " | ".join(parts)
