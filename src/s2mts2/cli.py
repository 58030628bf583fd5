"""The ``s2mts2`` command: one subcommand per stage. Parses, loads config, calls the engine."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s2mts2 import __version__
from s2mts2.errors import ConfigError, S2MTS2Error
from s2mts2.files import check_writable, describe_os_error

if TYPE_CHECKING:
    from s2mts2.config import RunConfig

DATASETS = ("chestxray14", "chexpert", "isic2018", "csv", "synthetic")
DEBUG_HELP = "show the Python traceback of an error (default: one line)"
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: the first GPU, else the CPU)"
CAM_LAYER_HELP = (
    "Grad-CAM layer: auto (default: the deepest whose map is at least 7x7 at the model's input "
    "size), or layer1..layer4 (ResNet), denseblock1..denseblock3 / norm5 (DenseNet)"
)
# exit codes (README.md, "Exit codes and errors")
EXIT_FAILED = 1  # the system could not do it (file system, memory), or predict read no input
EXIT_BAD_INPUT = 2  # the command line, config or input data is wrong
EXIT_INTERRUPTED = 130


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""

    def whole_number(text: str) -> int:
        value = int(text)  # a ValueError: argparse says "invalid whole_number value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    """``["view=PA", "frontal_only=true"]`` -> ``{"view": "PA", "frontal_only": "true"}``."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise S2MTS2Error(f"{flag} expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def help_with_default(action: argparse.Action) -> str:
    """``action``'s help text ending with its default: ``(default: X)``, ``(default: off)`` for a
    flag; unchanged where the text names its default already or the argument is required."""
    text = action.help or ""
    if "default" in text or action.required or action.default is argparse.SUPPRESS:
        return text
    if action.nargs == 0:  # a flag: store_true / store_false
        return f"{text} (default: off)"
    if action.default is None or action.default == []:
        return text  # such a help text must say what happens without it (tests/test_cli.py)
    return f"{text} (default: %(default)s)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with every argument's default (:func:`help_with_default`); descriptions and
    epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_with_default(action)


def _adapter_options_text() -> str:
    """The ``--option`` keys of every dataset adapter with their defaults, for ``prepare``."""
    import inspect
    import textwrap

    from s2mts2.data.adapters import adapter_options

    lines = ["dataset options (--option KEY=VALUE, repeatable):"]
    for name in DATASETS:
        keys = [
            f"{key} (required)" if default is inspect.Parameter.empty else f"{key}={default}"
            for key, default in adapter_options(name).items()
        ]
        lines += textwrap.wrap(
            ", ".join(keys) or "none",
            width=96,
            initial_indent=f"  {name}: ",
            subsequent_indent=" " * (len(name) + 4),
        )
    return "\n".join(lines)


def _add_training_flags(p: argparse.ArgumentParser, stage: str) -> None:
    from s2mts2.config import PRESET_DIR

    presets = ", ".join(sorted(path.stem for path in PRESET_DIR.glob("*.yaml")))
    p.add_argument(
        "--config",
        type=Path,
        metavar="PRESET|FILE",
        help=f"a built-in preset ({presets}) or a YAML file; its relative paths are taken from "
        "the current folder (default: the built-in defaults; with --resume: OUT/config.yaml)",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="prepared-data folder (the --out of s2mts2 prepare), = --set data.dir=DIR "
        "(default: the config's data.dir)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {stage}.epochs=5 --set seed=1; inside "
        f"{stage}, epochs means {stage}.epochs (repeatable; default: none)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder: checkpoints, config.yaml, run.json, metrics.csv, train.log",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from OUT/last.pt, with the settings it recorded in "
        "OUT/config.yaml unless --config is given",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the per-epoch metrics to OUT/tensorboard (pip install -e '.[tb]'); "
        "= --set tensorboard=true",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2mts2",
        description="Self-supervised Mean Teacher (S2MTS2) for semi-supervised medical image "
        "classification:\nprepare -> pretrain (stage 1, JCL) -> finetune (stage 2) -> evaluate.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s2mts2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # --debug after the subcommand too; SUPPRESS keeps the subparser from resetting it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[debug], formatter_class=HelpFormatter, **kwargs)

    p = command(
        "prepare",
        help="dataset -> table, split, labelled subset, uint8 cache",
        epilog=_adapter_options_text(),
    )
    p.add_argument("dataset", choices=DATASETS, help=f"dataset adapter: {', '.join(DATASETS)}")
    p.add_argument(
        "--root",
        type=Path,
        help="dataset folder (default: none; required except for synthetic, which generates its "
        "images into OUT)",
    )
    p.add_argument("--out", type=Path, required=True, help="prepared-data folder")
    p.add_argument("--size", type=_at_least(1), default=256, help="cache resolution in pixels")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--labelled",
        type=float,
        help="labelled fraction of train, in (0, 1] (default: none drawn; finetune draws it)",
    )
    g.add_argument(
        "--labelled-count",
        type=_at_least(1),
        help="number of labelled train images (default: none drawn; finetune draws it)",
    )
    p.add_argument("--by-patient", action="store_true", help="sample labelled patients/lesions")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the labelled subset drawn here, the one a run with data.split_seed=SEED "
        "trains on; the train/val/test split has its own, --option seed=N",
    )
    p.add_argument(
        "--workers", type=_at_least(1), default=None, help="decode processes (default: all cores)"
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, e.g. split=lesion, view=PA, csv=labels.csv; each adapter's keys "
        "are listed below (repeatable; default: the adapter's defaults)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    for name, text in (
        ("pretrain", "stage 1: self-supervised mean-teacher pre-training (JCL or MoCo)"),
        ("finetune", "stage 2: semi-supervised mean-teacher fine-tuning"),
    ):
        p = command(name, help=text)
        _add_training_flags(p, name)
        if name == "finetune":
            p.add_argument(
                "--labelled",
                type=float,
                help="labelled fraction, = --set data.labelled=X data.labelled_count=0 "
                "(default: the config's data.labelled / data.labelled_count)",
            )
            p.add_argument(
                "--pretrained",
                metavar="RUN",
                help="stage-1 run folder (the --out of s2mts2 pretrain) or its last.pt, "
                "= --set finetune.pretrained=RUN (default: the config's finetune.pretrained)",
            )

    p = command(
        "evaluate",
        help="metrics, per-image predictions, report, ROC (and confusion-matrix) plots of a "
        "checkpoint",
    )
    p.add_argument("checkpoint", type=Path, help="stage-2 checkpoint (best.pt or last.pt)")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to score"
    )
    p.add_argument(
        "--model",
        default="teacher",
        choices=("teacher", "student"),
        help="network to score (best.pt holds the teacher only; last.pt both)",
    )
    p.add_argument("--data", type=Path, help="prepared-data folder (default: from the checkpoint)")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: eval-SPLIT next to the checkpoint)",
    )
    p.add_argument(
        "--bootstrap", type=_at_least(0), default=1000, help="bootstrap replicates for the CI"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = command(
        "compare",
        help="table and plots of several runs; paired differences where they share the images",
    )
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_OR_EVAL",
        help="run folders (their best.pt), checkpoints, evaluation folders or metrics.json "
        "files; the first is the reference of the paired differences",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the table and plots")
    p.add_argument("--names", nargs="+", metavar="NAME", help="one name per run (default: folder)")
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split to evaluate runs and checkpoints on when they have no evaluation yet "
        "(default test)",
    )
    p.add_argument(
        "--model", default="teacher", choices=("teacher", "student"), help="(default teacher)"
    )
    p.add_argument(
        "--bootstrap",
        type=_at_least(1),
        default=1000,
        help="bootstrap replicates of the paired CIs (default 1000)",
    )
    p.add_argument("--device", default="auto", help="for evaluations it runs (default auto)")

    p = command(
        "predict",
        help="class probabilities (and Grad-CAM heatmaps) for PNG/JPEG/TIFF/BMP/DICOM files",
    )
    p.add_argument(
        "model", type=Path, help="stage-2 checkpoint (best.pt) or model.onnx (with its model.json)"
    )
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument(
        "--out", type=Path, default=Path("predictions.csv"), help="results file, .csv or .json"
    )
    p.add_argument(
        "--cam",
        type=Path,
        metavar="DIR",
        help="write Grad-CAM overlays (PNG) to DIR (default: none)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="Grad-CAM for these classes, after INPUTS (default: the --top-k most probable)",
    )
    g.add_argument(
        "--top-k",
        type=_at_least(1),
        default=1,
        metavar="K",
        help="Grad-CAM for the K most probable classes",
    )
    p.add_argument("--cam-layer", metavar="LAYER", help=CAM_LAYER_HELP)
    p.add_argument("--batch-size", type=_at_least(1), default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command(
        "serve",
        help="a local web page: drop images, see probabilities and Grad-CAM; browse a split",
    )
    p.add_argument(
        "model", type=Path, help="stage-2 checkpoint (best.pt) or model.onnx (with its model.json)"
    )
    p.add_argument(
        "--data",
        type=Path,
        help="prepared-data folder whose split the page browses (default: none, drop images only)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="split of --data that the page browses",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--max-file-mb", type=float, default=50.0, help="largest upload in MB")
    p.add_argument("--max-files", type=int, default=64, help="uploads held in memory")
    p.add_argument("--cam-layer", metavar="LAYER", help=CAM_LAYER_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command("export", help="ONNX model + safetensors weights + JSON model card")
    p.add_argument("checkpoint", type=Path, help="stage-2 checkpoint (best.pt)")
    p.add_argument(
        "--onnx",
        type=Path,
        required=True,
        help="ONNX file to write; NAME.safetensors and NAME.json are written next to it",
    )

    p = command("bench", help="training speed: model-only vs end-to-end vs reference")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        default="auto",
        help="engine steps: auto | bf16 | fp16 | fp32 (auto: bf16 on CUDA, fp16 on GPUs "
        "without bf16, fp32 on a CPU)",
    )
    p.add_argument("--model", help="backbone (default densenet121; --quick on CPU: resnet18)")
    p.add_argument("--size", type=int, help="training resolution (default 224; --quick CPU: 64)")
    p.add_argument("--views", type=int, default=2, help="M key views per image (stage 1)")
    p.add_argument("--queue-size", type=int, default=65536, help="K negatives (stage 1)")
    p.add_argument("--batch-size", type=int, help="images per step (default 32; --quick CPU: 16)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 10)")
    p.add_argument("--repeats", type=int, help="rounds: fastest speeds, median ratios (default 3)")
    p.add_argument("--channels", type=int, default=1, help="generated images: 1 grey, 3 RGB")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    p.add_argument("--data", type=Path, help="prepared-data folder (default: generate images)")
    p.add_argument("--quick", action="store_true", help="small settings (under 2 minutes)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="the engine's steps through torch.compile (the config's compile; the first warm-up "
        "step compiles)",
    )
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="stage 1 launches its kernels one by one (the config's cuda_graphs: false)",
    )
    p.add_argument("--json", type=Path, required=True, help="write the result to this JSON file")

    p = command(
        "demo",
        help="the whole pipeline on generated X-ray-like images and the bundled digits, "
        "minutes on a CPU",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder")
    p.add_argument("--quick", action="store_true", help="fewer epochs (about 2 minutes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _outputs(args: argparse.Namespace) -> list[tuple[Path, bool]]:
    """(path, is a folder) of everything the command will write, checked before it starts."""
    if args.command == "predict":
        return [(args.out, False)] + ([(args.cam, True)] if args.cam is not None else [])
    if args.command == "evaluate":
        from s2mts2.engine.evaluate import default_eval_dir

        out = args.out or default_eval_dir(args.checkpoint, args.split, args.model)
        return [(out, True)]
    if args.command == "export":
        return [(args.onnx, False)]
    if args.command == "bench":
        return [(args.json, False)]
    if args.command in ("prepare", "pretrain", "finetune", "demo", "compare"):
        return [(args.out, True)]
    return []


def training_config(args: argparse.Namespace) -> RunConfig:
    """The config of a ``pretrain``/``finetune`` command: ``--config`` (with ``--resume`` and no
    ``--config``: the run's own ``OUT/config.yaml``) <- ``--set`` <- the flags that name keys;
    its paths made absolute (:meth:`RunConfig.absolute_paths`)."""
    from s2mts2.config import load_config

    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.dir={args.data}")
    if getattr(args, "pretrained", None) is not None:
        overrides.append(f"finetune.pretrained={args.pretrained}")
    if getattr(args, "labelled", None) is not None:
        # the fraction asked for here, not a count from the config
        overrides += [f"data.labelled={args.labelled}", "data.labelled_count=0"]
    if args.tensorboard:
        overrides.append("tensorboard=true")
    config = args.config
    if config is None and args.resume:
        config = args.out / "config.yaml"
        if not config.is_file():
            raise ConfigError(
                f"--resume: {args.out} holds no run (no {config.name}); give the --out of an "
                f"earlier s2mts2 {args.command}, or --config to start one there without --resume"
            )
    cfg = load_config(config, overrides, stage=args.command)
    cfg.absolute_paths()
    return cfg


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    command = "s2mts2 " + shlex.join(argv)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes
        for path, folder in _outputs(args):
            check_writable(path, folder=folder)
    if args.command == "prepare":
        from s2mts2.data.adapters import parse_option
        from s2mts2.data.prepared import prepare_dataset

        if args.root is None and args.dataset != "synthetic":
            raise S2MTS2Error(f"prepare {args.dataset}: --root is required")
        summary = prepare_dataset(
            args.dataset,
            args.root if args.root is not None else args.out,
            args.out,
            size=args.size,
            labelled=args.labelled,
            labelled_count=args.labelled_count,
            seed=args.seed,
            by_group=args.by_patient,
            workers=args.workers,
            progress=not args.no_progress,
            options={
                k: parse_option(args.dataset, k, v)
                for k, v in _key_values(args.option, "--option").items()
            },
        )
        print(json.dumps(summary, indent=2))
        print(f"wrote {args.out / 'summary.json'}")
        return 0
    if args.command in ("pretrain", "finetune"):
        cfg = training_config(args)
        if args.command == "pretrain":
            from s2mts2.engine.pretrain import pretrain as train
        else:
            from s2mts2.engine.finetune import finetune as train
        ckpt = train(
            cfg, args.out, resume=args.resume, progress=not args.no_progress, command=command
        )
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
            print(f"checkpoint: {ckpt}")
        return 0
    if args.command == "evaluate":
        from s2mts2.engine.evaluate import evaluate_checkpoint

        metrics = evaluate_checkpoint(
            args.checkpoint,
            split=args.split,
            model=args.model,
            data_dir=args.data,
            out_dir=args.out,
            n_boot=args.bootstrap,
            device=args.device,
        )
        print(metrics["report_markdown"])
        return 0
    if args.command == "compare":
        from s2mts2.engine.compare import compare_runs

        result = compare_runs(
            args.runs,
            args.out,
            names=args.names,
            split=args.split,
            model=args.model,
            n_boot=args.bootstrap,
            device=args.device,
        )
        print(result["report_markdown"])
        return 0
    if args.command == "predict":
        from s2mts2.infer.predict import run_predict

        result = run_predict(
            args.model,
            args.inputs,
            out=args.out,
            cam_dir=args.cam,
            cam_classes=args.classes,
            top_k=args.top_k,
            cam_layer=args.cam_layer,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.no_progress,
        )
        print(result.summary())
        return EXIT_FAILED if result.all_failed else 0
    if args.command == "serve":
        from s2mts2.infer.serve.run import run_serve

        run_serve(
            args.model,
            data_dir=args.data,
            split=args.split,
            host=args.host,
            port=args.port,
            device=args.device,
            max_file_mb=args.max_file_mb,
            max_files=args.max_files,
            cam_layer=args.cam_layer,
            progress=not args.no_progress,
        )
        return 0
    if args.command == "export":
        from s2mts2.infer.export import export_model

        print(export_model(args.checkpoint, args.onnx).summary())
        return 0
    if args.command == "bench":
        # On a CPU already busy with other jobs, OpenMP threads that spin while waiting starve
        # each other (10x slower on a loaded 2-core machine): wait passively there. Chosen
        # before torch is imported; an idle CPU keeps the default (spinning is faster there).
        if os.getloadavg()[0] >= (os.cpu_count() or 1):
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from s2mts2.bench import BenchSettings, format_table, run_bench, save_result

        settings = BenchSettings(
            device=args.device,
            precision=args.precision,
            model=args.model,
            size=args.size,
            views=args.views,
            queue_size=args.queue_size,
            batch_size=args.batch_size,
            steps=args.steps,
            repeats=args.repeats,
            channels=args.channels,
            threads=args.threads,
            data=str(args.data) if args.data else None,
            compile=args.compile,
            cuda_graphs=args.cuda_graphs,
        )
        result = run_bench(settings, quick=args.quick, command=command)
        print(format_table(result))
        print(f"wrote {save_result(result, args.json)}")
        return 0
    if args.command == "demo":
        from s2mts2.demo import run_demo

        run_demo(args.out, quick=args.quick, progress=not args.no_progress)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure ends in one line on stderr and an exit code (README.md,
    "Exit codes and errors"), or in its traceback with ``--debug``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(message)s",
    )
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        hint = ""
        if args.command in ("pretrain", "finetune"):
            last = args.out / "last.pt"
            hint = (
                f"; finished epochs are in {last}: continue with "
                f"s2mts2 {args.command} --out {shlex.quote(str(args.out))} --resume"
                if last.is_file()
                else "; no epoch had finished, so nothing was saved"
            )
        print(f"s2mts2 {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        code, text = _describe(e)
        print(f"s2mts2 {args.command}: error: {text}", file=sys.stderr)
        return code


def _describe(e: Exception) -> tuple[int, str]:
    """(exit code, one line) for an error that ended a command."""
    if isinstance(e, S2MTS2Error):
        return EXIT_BAD_INPUT, str(e)
    if isinstance(e, OSError):
        return EXIT_FAILED, describe_os_error(e)
    if isinstance(e, MemoryError):
        return EXIT_FAILED, "out of memory (a smaller --batch-size or image size may fit)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return EXIT_FAILED, (
        f"unexpected {type(e).__name__}: {first} (a bug in s2mts2? --debug shows where)"
    )
