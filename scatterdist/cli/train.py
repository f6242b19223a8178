"""``scatterdist train`` and ``scatterdist evaluate``: the hybrid equivariant CNN on a coefficient store."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the inputs (reported as one line and exit status 2, not a traceback)."""
    from scatterdist.inputs import CatalogError
    from scatterdist.store import StoreError
    from scatterdist.train.checkpoint import CheckpointError
    from scatterdist.train.loop import RunConfigError, StoreInProgressError
    from scatterdist.train.rundir import RunDirError, RunLockedError

    return (CatalogError, CheckpointError, RunConfigError, RunDirError, RunLockedError, StoreError, StoreInProgressError, FileNotFoundError)


def _reporting_user_errors(command: str, run):
    """``run(args)``, with input errors reported as one line and exit status 2 (no traceback)."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _user_errors() as exc:
            print(f"scatterdist {command}: error: {exc}", file=sys.stderr)
            return 2

    return handler


def _run_train(args: argparse.Namespace) -> int:
    from scatterdist.train.loop import TrainConfig, train

    cfg = TrainConfig(
        store=args.store, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        resume=args.resume, labels_csv=args.labels, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        hidden=args.hidden, n_layers=args.layers, nonlinearity=args.nonlinearity, workers=args.workers,
        device=args.device, progress=False if args.no_progress else None, allow_partial=args.allow_partial,
        allow_world_size_change=args.allow_world_size_change,
    )
    history = train(cfg)
    if history and int(os.environ.get("RANK", "0")) == 0:
        last = history[-1]
        print(f"done: {len(history)} epochs in {cfg.out} (train accuracy {last['train_accuracy']:.3f})")
    return 0


def _format_confusion(result: dict) -> str:
    names = result["class_names"]
    width = max(8, *(len(n) + 2 for n in names))
    lines = ["true \\ predicted".ljust(width + 4) + "".join(n.rjust(width) for n in names)]
    for name, row in zip(names, result["confusion"]):
        lines.append(name.ljust(width + 4) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def _run_evaluate(args: argparse.Namespace) -> int:
    from scatterdist.train.loop import evaluate

    result = evaluate(
        args.run_dir, args.store, split=args.split, labels_csv=args.labels, batch_size=args.batch_size,
        progress=False if args.no_progress else None,
    )
    skipped = ", ".join(f"{n} {why}" for why, n in (
        ("failed", result["skipped"]["failed"]), ("not computed", result["skipped"]["todo"]),
        ("without a label", result["skipped"]["unlabelled"])) if n)
    print(f"{result['split']} split of {result['store']}: {result['n_maps']} maps" + (f" (skipped: {skipped})" if skipped else ""))
    print(f"accuracy {result['accuracy']:.4f}  (loss {result['loss']:.4f})")
    print(_format_confusion(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``evaluate`` subcommands."""
    p = subparsers.add_parser(
        "train",
        help="train the hybrid equivariant CNN on a coefficient store (one process or under torchrun)",
        description=(
            "Train a rotation-invariant hybrid spherical CNN on the scattering coefficients of STORE. "
            "Runs alone or under `torchrun --nproc-per-node N -m scatterdist train ...` (DDP; gloo on CPU, "
            "nccl on GPU). If RUN_DIR already holds a checkpoint, the same command resumes after its last epoch. "
            "Refused (exit 2, one line): a store still being written (see --allow-partial), a RUN_DIR another "
            "trainer holds, a resume with other settings, another number of processes (see "
            "--allow-world-size-change) or a store re-created with another configuration. Says how many maps it "
            "skips and why (failed, not computed, without a label)."
        ),
    )
    p.add_argument("store", help="coefficient store (Zarr v3 directory written by `scatterdist scatter`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoint.pt, metrics.jsonl, curves.png")
    p.add_argument("--epochs", type=int, default=20, help="total number of epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=16, help="maps per batch and per rank (default 16)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model init and the shard shuffling (default 0)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint in RUN_DIR (resuming is automatic anyway)")
    p.add_argument("--labels", metavar="CSV", help="labels from a CSV with columns map (or id), label instead of the store")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of each class in the validation split (stratified by label, ranked by id hash)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of each class held out for evaluate (stratified by label, ranked by id hash)")
    p.add_argument("--hidden", type=int, default=16, help="channels of the equivariant layers (default 16)")
    p.add_argument("--layers", type=int, default=2, help="number of conv + nonlinearity blocks (default 2)")
    p.add_argument(
        "--nonlinearity", choices=("tensor", "pointwise", "both"), default="tensor",
        help="tensor: exactly equivariant Clebsch-Gordan products (default); pointwise: ReLU on the sphere",
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars on a terminal only; SCATTERDIST_PROGRESS=1 forces them)")
    p.add_argument(
        "--allow-partial", action="store_true",
        help="train on a store that is still being written (its writer lock is held): only the maps done when the run starts",
    )
    p.add_argument(
        "--allow-world-size-change", action="store_true",
        help="resume a checkpoint written by another number of processes (the result then differs from an uninterrupted run)",
    )
    p.set_defaults(func=_reporting_user_errors("train", _run_train))

    e = subparsers.add_parser(
        "evaluate",
        help="accuracy and confusion matrix of a trained run",
        description=(
            "Evaluate the model in RUN_DIR on STORE: the held-out test split when STORE is the training "
            "store, every labelled map with status 1 of any other store."
        ),
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("store", metavar="STORE")
    e.add_argument("--split", choices=("train", "val", "test", "all"), help="override the split chosen by default")
    e.add_argument("--labels", metavar="CSV", help="labels CSV (columns map or id, label)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    e.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars on a terminal only; SCATTERDIST_PROGRESS=1 forces them)")
    e.set_defaults(func=_reporting_user_errors("evaluate", _run_evaluate))


if __name__ == "__main__":  # pragma: no cover
    from scatterdist.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
