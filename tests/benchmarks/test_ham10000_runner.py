"""The benchmark runner on generated data: cells, stage-1 reuse, skipping and resume, JSON schema."""

import json
import shutil
from pathlib import Path

import pytest
from spies import interrupt_after_first_checkpoint, spy

import s2mts2.engine.finetune as finetune_mod
from s2mts2.engine.checkpoint import load_checkpoint

TINY = (
    "data.size=16",
    "data.labelled=0.3",
    "model.backbone=resnet18",
    "model.proj_hidden=32",
    "model.head_hidden=32",
    "pretrain.epochs=1",
    "pretrain.batch_size=16",
    "pretrain.queue_size=32",
    "pretrain.monitor_every=0",
    "finetune.epochs=2",
    "finetune.steps_per_epoch=1",
    "finetune.batch_size=8",
    "threads=1",
)


@pytest.fixture(scope="module")
def runner(load_benchmark):
    return load_benchmark("ham10000")


def make_plan(runner, tmp: Path):
    bench = runner.Benchmark(
        "synthetic", "synthetic", None, {"n": 48, "size": 16, "task": "multiclass"}, preset="demo"
    )
    return runner.Plan(
        bench=bench,
        runs_dir=tmp / "runs" / "synthetic",
        results_dir=tmp / "results",
        overrides=TINY,
        methods=("supervised", "s2mts2"),
        seeds=(0, 1),
        n_boot=0,
        progress=False,
        command="pytest",
    )


def test_runner_cells_resume_and_schema(runner, tmp_path, monkeypatch):
    plan = make_plan(runner, tmp_path)
    calls: list[tuple[str, bool]] = []
    real_pretrain, real_finetune = runner.pretrain, runner.finetune

    def counting_pretrain(cfg, out, **kw):
        calls.append(("pretrain", kw["resume"]))
        return real_pretrain(cfg, out, **kw)

    def counting_finetune(cfg, out, **kw):
        calls.append((f"{cfg.finetune.method}-s{cfg.seed}", kw["resume"]))
        return real_finetune(cfg, out, **kw)

    monkeypatch.setattr(runner, "pretrain", counting_pretrain)
    monkeypatch.setattr(runner, "finetune", counting_finetune)

    summary = runner.run_benchmark(plan)
    # one stage-1 run (JCL) shared by both seeds; four fine-tuning cells
    assert calls == [
        ("supervised-s0", False),
        ("pretrain", False),
        ("s2mts2-s0", False),
        ("supervised-s1", False),
        ("s2mts2-s1", False),
    ]
    written = json.loads((plan.results_dir / "synthetic.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert (plan.results_dir / "synthetic.png").is_file()
    assert set(written["methods"]) == {"supervised", "s2mts2"}
    for method in ("supervised", "s2mts2"):
        entry = written["methods"][method]
        assert entry["seeds"] == [0, 1]
        # SRC-MT's p >= 0.18 evaluation is reported for the ISIC2018 classes only
        assert "srcmt_accuracy" not in entry
        for name in ("macro_auc", "balanced_accuracy", "accuracy", "macro_f1"):
            runs = entry[name]["runs"]
            assert len(runs) == 2 and all(0.0 <= r <= 1.0 for r in runs)
            assert entry[name]["mean"] == pytest.approx(sum(runs) / 2)
            assert entry[name]["sd"] == pytest.approx(abs(runs[0] - runs[1]) / 2**0.5)
    assert written["cells"] == {"done": 4, "total": 8, "seeds": [0, 1]}  # 4 methods x 2 seeds
    assert written["stage1"]["jcl"]["knn_mean_auc_random_init"] is not None
    assert written["stage1"]["jcl"]["epochs"] == 1
    for key in ("split", "preset", "machine", "command", "minutes"):
        assert key in written
    # the seed drives the labelled subset
    cell0 = json.loads((plan.runs_dir / "s2mts2-s0" / "result.json").read_text())
    cell1 = json.loads((plan.runs_dir / "s2mts2-s1" / "result.json").read_text())
    assert cell0["config"]["data"]["split_seed"] == 0
    assert cell1["config"]["data"]["split_seed"] == 1
    lists = sorted((Path(cell0["config"]["data"]["dir"]) / "labelled").glob("*.txt"))
    assert [p.name for p in lists] == ["labelled-f0.3-s0.txt", "labelled-f0.3-s1.txt"]
    assert lists[0].read_text() != lists[1].read_text()
    assert cell0["config"]["finetune"]["pretrained"].endswith("stage1-jcl/last.pt")

    # a re-run skips every finished cell and the finished stage 1
    calls.clear()
    again = runner.run_benchmark(plan)
    assert calls == []
    assert again["methods"] == summary["methods"]

    # a finished cell keeps best.pt and its result, not the training state
    cell = plan.runs_dir / "supervised-s1"
    assert (cell / "best.pt").is_file() and not (cell / "last.pt").exists()
    # a cell interrupted after its first epoch resumes from last.pt; nothing else reruns
    shutil.rmtree(cell)
    plan.overrides = (*plan.overrides, "checkpoint_interval=0")  # a write after every epoch
    with monkeypatch.context() as patch:
        interrupt_after_first_checkpoint(patch, finetune_mod)
        with pytest.raises(KeyboardInterrupt):
            runner.run_benchmark(plan)
    assert load_checkpoint(cell / "last.pt")["epoch"] == 1
    calls.clear()
    runner.run_benchmark(plan)
    assert calls == [("supervised-s1", True)]
    assert (cell / "result.json").is_file() and not (cell / "last.pt").exists()


def test_changed_recipe_is_refused(runner, tmp_path):
    plan = make_plan(runner, tmp_path)
    plan.methods, plan.seeds = ("supervised",), (0,)
    runner.run_benchmark(plan)
    # a folder older than a setting (its stored config lacks the key) counts as its default
    result = plan.runs_dir / "supervised-s0" / "result.json"
    stored = json.loads(result.read_text())
    del stored["config"]["model"]["sync_bn"]
    stored["config"]["model"]["shared_bn_stats"] = False  # and one of a retired setting
    result.write_text(json.dumps(stored))
    runner.run_benchmark(plan)
    plan.overrides = (*TINY, "model.sync_bn=true")
    with pytest.raises(runner.ConfigError, match="another recipe"):
        runner.run_benchmark(plan)
    plan.overrides = (*TINY, "finetune.lr=0.5")
    with pytest.raises(runner.ConfigError, match="another recipe"):
        runner.run_benchmark(plan)


def test_digits_benchmark_reads_the_digits_folder_with_the_csv_adapter(runner, tmp_path):
    """The digits benchmark prepares the folder of ``s2mts2.data.digits`` with its CSV options,
    on the stratified split only."""
    from s2mts2.data import digits

    bench = runner.benchmark_for("digits", "stratified", tmp_path)
    assert bench.adapter == "csv" and bench.make_root is digits.write_digits_folder
    assert bench.options == digits.CSV_OPTIONS
    with pytest.raises(runner.ConfigError, match="stratified"):
        runner.benchmark_for("digits", "grouped", tmp_path)


def test_fractions_study_pairs_cells_shares_stage1_and_writes_its_tables(
    runner, tmp_path, monkeypatch
):
    """The label-efficiency study on generated data: method × fraction cells on one shared
    stage-1 run, one labelled subset per (fraction, seed), the identity shift reproduces the
    in-domain AUC exactly, JSON + Markdown + plot with the paired comparison, re-runs skip."""
    plan = make_plan(runner, tmp_path)
    identity = runner.ImageShift("identity")
    plan.bench = runner.replace(
        plan.bench, shifts=(identity, runner.ImageShift("low-contrast", contrast=0.5))
    )
    plan.fractions, plan.seeds, plan.n_boot = (0.3, 0.6), (0,), 20
    plan.runs_dir = tmp_path / "runs" / plan.stem
    assert plan.stem == "synthetic-fractions"
    scored = spy(monkeypatch, runner, "split_predictions")
    summary = runner.run_benchmark(plan)

    names = sorted(p.parent.name for p in plan.runs_dir.glob("*/result.json"))
    assert names == [f"{m}-f{f}-s0" for m in ("s2mts2", "supervised") for f in ("0.3", "0.6")]
    assert [p.name for p in plan.runs_dir.glob("stage1-*")] == ["stage1-jcl"]
    for fraction in (0.3, 0.6):
        cells = [
            json.loads((plan.runs_dir / f"{m}-f{fraction:g}-s0" / "result.json").read_text())
            for m in ("supervised", "s2mts2")
        ]
        assert [c["config"]["data"]["labelled"] for c in cells] == [fraction, fraction]
        assert {c["config"]["data"]["split_seed"] for c in cells} == {0}
        for c in cells:
            assert c["shifted_macro_auc"]["identity"] == c["metrics"]["macro_auc"]
            assert c["shifted_macro_auc"]["low-contrast"] != c["metrics"]["macro_auc"]
            # validation under the same shifts: the identity gives the selected epoch's score
            val = c["val_shifted_macro_auc"]
            assert val["identity"] == pytest.approx(c["val_mean_auc"], abs=1e-6)
            assert set(val) == {"identity", "low-contrast"}
    # per cell: test, test under each shift, validation under each shift
    splits = [(args[1], kwargs.get("shift")) for args, kwargs in scored]
    for shift in (identity, plan.bench.shifts[1]):
        assert splits.count(("test", shift)) == splits.count(("val", shift)) == 4
    data_dir = Path(cells[0]["config"]["data"]["dir"])
    lists = sorted(p.name for p in (data_dir / "labelled").glob("*.txt"))
    assert lists == ["labelled-f0.3-s0.txt", "labelled-f0.6-s0.txt"]  # + stage 1's (0.3)

    written = json.loads((plan.results_dir / "synthetic-fractions.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["fractions"] == [0.3, 0.6]
    assert written["cells"] == {"done": 4, "total": 8, "seeds": [0]}
    entry = written["by_fraction"]["0.6"]["s2mts2"]
    assert entry["seeds"] == [0] and entry["macro_auc"]["sd"] is None
    assert entry["shift_drop"]["mean"] == pytest.approx(
        entry["macro_auc"]["mean"]
        - (entry["macro_auc_identity"]["mean"] + entry["macro_auc_low-contrast"]["mean"]) / 2
    )
    paired = written["paired"]["0.3"]["s2mts2 - supervised"]
    auc = {
        m: written["by_fraction"]["0.3"][m]["macro_auc"]["mean"] for m in ("s2mts2", "supervised")
    }
    assert paired["seeds"] == [0]
    assert paired["difference"] == pytest.approx(auc["s2mts2"] - auc["supervised"])
    assert len(written["cell_results"]) == 4
    table = (plan.results_dir / "synthetic-fractions.md").read_text()
    assert "| method | 30 % | 60 % |" in table and "s2mts2 − supervised" in table
    assert (plan.results_dir / "synthetic-fractions.png").stat().st_size > 0

    calls = []
    real = runner.finetune
    monkeypatch.setattr(runner, "finetune", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    runner.run_benchmark(plan)
    assert calls == []
