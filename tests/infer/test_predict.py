import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from s2mts2.cli import main
from s2mts2.config import config_from_dict
from s2mts2.data.imageio import load_preprocessed
from s2mts2.engine.builders import classifier_network
from s2mts2.engine.checkpoint import load_checkpoint, save_checkpoint
from s2mts2.engine.evaluate import evaluate_checkpoint, load_classifier
from s2mts2.engine.model_info import ModelInfo
from s2mts2.errors import ConfigError, DataError
from s2mts2.infer.predict import expand_inputs, run_predict

from .conftest import GREY_CLASSES, RGB_CLASSES, png_bytes, teacher_weights

REAL_NAMES = {
    "00000001_000.png",
    "00027426_000.png",
    "16747_3_1.jpg",
    "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manual_probabilities(ckpt: Path, images: list[Path]) -> np.ndarray:
    """Independent pipeline: cache preprocessing, (x/255 - mean)/std, teacher, softmax/sigmoid."""
    state = load_checkpoint(ckpt)
    meta = state["meta"]
    pixels = [load_preprocessed(p, meta["size"], meta["channels"]) for p in images]
    x = (np.stack(pixels).astype(np.float64) / 255.0 - meta["mean"]) / meta["std"]
    x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
    model = config_from_dict(state["config"]).model
    net = classifier_network(model, meta["channels"], len(meta["classes"])).eval()
    net.load_state_dict(teacher_weights(ckpt))
    with torch.no_grad():
        logits = net(x)
    return (torch.softmax(logits, 1) if meta["task"] == "multiclass" else logits.sigmoid()).numpy()


def test_real_samples_give_four_rows_of_probabilities(shared_data, grey_ckpt, tmp_path):
    folder = shared_data / "real_samples"
    out = tmp_path / "results.csv"
    argv = ["predict", str(grey_ckpt), str(folder), "--out", str(out), "--batch-size", "3"]
    assert main([*argv, "--no-progress"]) == 0
    rows = read_csv(out)
    assert {Path(r["path"]).name for r in rows} == REAL_NAMES
    assert list(rows[0]) == ["path", *GREY_CLASSES, "top_class", "error"]
    probs = np.array([[float(r[c]) for c in GREY_CLASSES] for r in rows])
    assert all(r["error"] == "" for r in rows)
    assert np.all((probs >= 0) & (probs <= 1))
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [r["top_class"] for r in rows] == [GREY_CLASSES[i] for i in probs.argmax(axis=1)]
    # batches of 3 + 1 give what one batch of the independent pipeline gives
    expected = manual_probabilities(grey_ckpt, [Path(r["path"]) for r in rows])
    np.testing.assert_allclose(probs, expected, atol=2e-6)


def test_unreadable_files_get_error_rows_and_the_rest_is_processed(
    shared_data, grey_ckpt, bad_files, tmp_path
):
    images = sorted((shared_data / "real_samples").iterdir())
    inputs = [images[0], *bad_files, *images[1:]]
    out = tmp_path / "results.json"
    result = run_predict(grey_ckpt, inputs, out=out, batch_size=2, progress=False)
    assert "2 file(s) could not be read" in result.summary()
    doc = json.loads(out.read_text())
    assert doc["classes"] == list(GREY_CLASSES) and doc["task"] == "multiclass"
    assert [r["path"] for r in doc["predictions"]] == [str(p) for p in inputs]  # input order
    rows = {Path(r["path"]).name: r for r in doc["predictions"]}
    for name in ("truncated.png", "notes.png"):
        assert rows[name]["probabilities"] is None and rows[name]["top_class"] is None
        assert rows[name]["error"]
    assert "truncated" in rows["truncated.png"]["error"].lower()
    for name in REAL_NAMES:
        probs = rows[name]["probabilities"]
        assert rows[name]["error"] is None and list(probs) == list(GREY_CLASSES)
        assert sum(probs.values()) == pytest.approx(1, abs=1e-6)
        assert rows[name]["top_class"] == max(probs, key=probs.get)


def test_multilabel_rgb_model_on_png_modes(rgb_ckpt, tmp_path):
    for name, mode in (("grey.png", "L"), ("colour.png", "RGB"), ("alpha.png", "RGBA")):
        (tmp_path / name).write_bytes(png_bytes(30 + len(name), 50, mode))
    out = tmp_path / "r.csv"
    run_predict(rgb_ckpt, [tmp_path / "*.png"], out=out, progress=False)
    rows = read_csv(out)
    assert list(rows[0]) == ["path", *RGB_CLASSES, "error"]  # no top class for multi-label
    assert len(rows) == 3
    probs = np.array([[float(r[c]) for c in RGB_CLASSES] for r in rows])
    assert np.all((probs > 0) & (probs < 1))
    expected = manual_probabilities(rgb_ckpt, [Path(r["path"]) for r in rows])
    np.testing.assert_allclose(probs, expected, atol=2e-6)


def test_expand_inputs(tmp_path):
    root = tmp_path / "scans"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in (
        "x.png",
        "a/y.JPG",
        "a/b/z.dcm",
        "a/b/w.jpeg",
        "t.TIFF",
        ".hidden/h.png",
        "a/.h.png",
    ):
        (root / rel).write_bytes(b"")
    (root / "a" / "readme.txt").write_text("not an image")
    (root / "a" / "b" / "1.2.840.5").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    (root / "a" / "b" / "IM0001").write_bytes(b"\0" * 128 + b"DICM")
    (root / "a" / "b" / "noext").write_bytes(b"\0" * 200)
    found = expand_inputs([root])
    rel = [p.relative_to(root).as_posix() for p in found]
    dicoms = ["a/b/z.dcm", "a/b/1.2.840.5", "a/b/IM0001"]
    assert rel == sorted(["x.png", "a/y.JPG", "a/b/w.jpeg", "t.TIFF", *dicoms])
    # glob + an overlapping folder: duplicates dropped, order of first appearance kept
    both = expand_inputs([str(root / "a" / "**" / "*.dcm"), root / "a"])
    assert both[0] == root / "a" / "b" / "z.dcm" and len(both) == 5
    # two spellings of one file: one row, under the first spelling
    assert expand_inputs([root / "x.png", root / "a" / ".." / "x.png"]) == [root / "x.png"]
    # a file given explicitly is kept whatever it is; a missing one too (its row reports it)
    missing = tmp_path / "missing.png"
    assert expand_inputs([root / "a" / "readme.txt", missing]) == [
        root / "a" / "readme.txt",
        missing,
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no input images"):
        expand_inputs([str(tmp_path / "nothing" / "*.png"), tmp_path / "empty"])


def test_missing_file_gives_an_error_row(grey_ckpt, tmp_path, capsys):
    out = tmp_path / "r.csv"
    run_predict(grey_ckpt, [tmp_path / "gone.png"], out=out, progress=False)
    (row,) = read_csv(out)
    assert row["error"] and row[GREY_CLASSES[0]] == ""
    # from the command line: rows are written, and the exit status says nothing was read
    args = ["predict", str(grey_ckpt), "--out", str(out), "--no-progress"]
    assert main([*args[:2], str(tmp_path / "gone.png"), *args[2:]]) == 1
    assert "1 file(s) could not be read" in capsys.readouterr().out
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    assert main([*args[:2], str(tmp_path / "gone.png"), str(image), *args[2:]]) == 0


def test_stage1_and_incomplete_checkpoints_are_refused(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    save_checkpoint({"kind": "pretrain", "student": {}, "meta": {"channels": 1}}, tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="pretrain checkpoint"):
        run_predict(tmp_path / "a.pt", [image], out=tmp_path / "r.csv", progress=False)
    save_checkpoint({"kind": "finetune", "meta": {}}, tmp_path / "b.pt")
    with pytest.raises(DataError, match="no config, teacher entry"):
        run_predict(tmp_path / "b.pt", [image], out=tmp_path / "r.csv", progress=False)
    # evaluate reads checkpoints the same way: the file is named
    with pytest.raises(ConfigError, match=f"{tmp_path / 'a.pt'} is a pretrain checkpoint"):
        evaluate_checkpoint(tmp_path / "a.pt", split="test")
    with pytest.raises(DataError, match=f"{tmp_path / 'b.pt'}: no config, teacher entry"):
        evaluate_checkpoint(tmp_path / "b.pt", split="test")


def test_bad_options_are_config_errors(grey_ckpt, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    with pytest.raises(ConfigError, match=r"\.csv or \.json"):
        run_predict(grey_ckpt, [image], out=tmp_path / "r.txt", progress=False)
    with pytest.raises(ConfigError, match="--cam"):
        run_predict(grey_ckpt, [image], out=tmp_path / "r.csv", cam_classes=["nodule"])
    with pytest.raises(ConfigError, match="--batch-size"):
        run_predict(grey_ckpt, [image], out=tmp_path / "r.csv", batch_size=0, progress=False)
    for k in (0, len(GREY_CLASSES) + 1):
        with pytest.raises(ConfigError, match="--top-k"):
            run_predict(grey_ckpt, [image], out=tmp_path / "r.csv", cam_dir=tmp_path / "c", top_k=k)


def test_the_checkpoints_own_mean_and_std_are_used(grey_ckpt, tmp_path):
    state = load_checkpoint(grey_ckpt)
    state["meta"]["mean"], state["meta"]["std"] = [0.3], [0.1]  # not the preset's values
    ckpt = tmp_path / "best.pt"
    save_checkpoint(state, ckpt)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    result = run_predict(ckpt, [image], out=tmp_path / "r.csv", progress=False)
    np.testing.assert_allclose(
        result.predictions[0].probabilities, manual_probabilities(ckpt, [image])[0], atol=2e-6
    )


def test_overlays_of_images_with_the_same_name_do_not_overwrite_each_other(grey_ckpt, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "scan.png").write_bytes(png_bytes())
    result = run_predict(
        grey_ckpt,
        [tmp_path / "a", tmp_path / "b"],
        out=tmp_path / "r.csv",
        cam_dir=tmp_path / "cams",
        progress=False,
    )
    cams = [c for p in result.predictions for c in p.cams]
    assert len(cams) == len(set(cams)) == 2 and all(Path(c).is_file() for c in cams)


def test_a_card_with_an_unknown_task_is_refused():
    values = {"classes": ["a"], "task": "regression", "channels": 1, "size": 8}
    with pytest.raises(DataError, match="card.json.*regression"):
        ModelInfo.from_mapping(values | {"mean": [0.5], "std": [0.2]}, "card.json")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_by_predict(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "finetune", "meta": {}, "payload": _Exploit(marker)}, evil)
    raw = tmp_path / "raw.pt"
    with open(raw, "wb") as f:
        pickle.dump({"kind": "finetune", "payload": _Exploit(marker)}, f)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes())
    out = tmp_path / "r.csv"
    for path in (evil, raw):
        code = main(["predict", str(path), str(image), "--out", str(out), "--no-progress"])
        assert code == 2
        assert f"{path}: refused to load" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


def test_load_classifier_gives_the_teacher_unless_asked_for_the_student(grey_ckpt):
    state = load_checkpoint(grey_ckpt)
    student_weights = state["student"]
    teacher, student = load_classifier(state), load_classifier(state, "student")
    for name, value in teacher_weights(grey_ckpt).items():
        assert torch.equal(teacher.state_dict()[name], value), name
        assert torch.equal(student.state_dict()[name], student_weights[name]), name
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(teacher(x), student(x))
