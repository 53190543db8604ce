"""Every subcommand against bad arguments, garbage / truncated / wrong-shape / malicious files
and unwritable outputs, all made here: exit code 2, one line `gridlens: error: ...` on stderr,
no traceback, no pickle payload run, and no file of the user's changed or removed."""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_runner import run

from gridlens.errors import CheckpointError
from gridlens.models import GridGPT, save
from gridlens.training import checkpoint as ckpt
from gridlens.training.config import TrainConfig
from gridlens.training.culture import loop
from gridlens.training.culture.config import CultureConfig
from gridlens.world.dataset import DatasetError, open_dataset, write_dataset

PACKAGE = Path(__file__).resolve().parents[1] / "gridlens"
UNWRITABLE = "/proc/gridlens-robustness/out"  # no file can ever be created under /proc
TINY = dict(d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32, tasks=("replace_color",))
CULTURE = CultureConfig(k=2, model="tiny", tasks="frame", train_quizzes=8, test_quizzes=4,
                        batch_size=4, min_fail=0, max_fail=1, rounds=0)  # fmt: skip


class Payload:
    """A pickle that, once loaded without weights_only, creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def flip_byte(path: Path, needle: bytes) -> None:
    """Flip one bit inside the tensor data `needle` (the bytes of a tensor) of `path`."""
    blob = bytearray(path.read_bytes())
    at = blob.find(needle)
    assert at >= 0
    blob[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's files, made once: malicious, garbage and damaged files of every kind."""
    root = tmp_path_factory.mktemp("user")
    marker = root / "PAYLOAD_RAN"
    torch.save({"model": Payload(marker)}, root / "evil.pt")
    (root / "evil_raw.pth").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    (root / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "garbage.pt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "garbage.npy").write_text("not an array\n")
    model = GridGPT(TrainConfig(**TINY).model_config(), seed=0)
    save(model, root / "model")
    (root / "truncated").mkdir()
    (root / "truncated" / "config.json").write_bytes((root / "model/config.json").read_bytes())
    blob = (root / "model/model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    shutil.copytree(root / "model", root / "flipped")
    flip_byte(root / "flipped/model.safetensors", model.embed.weight.detach().numpy().tobytes())
    _training_checkpoints(root, model)
    shutil.copytree(PACKAGE / "data" / "default_sae", root / "sae_flipped")
    sae_blob = (root / "sae_flipped/sae_weights.safetensors").read_bytes()
    flip_byte(root / "sae_flipped/sae_weights.safetensors", sae_blob[-4000:-3000])
    loop.Population.open(root / "population", CULTURE, resume=False)
    return root


def _training_checkpoints(root: Path, model: GridGPT) -> None:
    cfg = TrainConfig(**TINY)
    optimizer = torch.optim.Adam(model.parameters())
    state = {"config": cfg.to_dict(), "step": 0, "optimizer": optimizer.state_dict()}
    wrong = dict(model.state_dict(), **{"embed.weight": torch.zeros(3, 16)})
    for name, weights in (("good", model.state_dict()), ("wrong_shape", wrong)):
        written = ckpt.save_checkpoint({**state, "model": weights}, root / name, step=0)
        shutil.move(written, root / f"{name}.pt")
    shutil.copy(root / "good.pt", root / "flipped.pt")
    flip_byte(root / "flipped.pt", model.embed.weight.detach().numpy().tobytes())


@pytest.fixture
def cli(capsys, user, tmp_path):
    """Run the CLI in `tmp_path` and check every promise of a refused command."""

    def refuse(*args: str, expect: str = "") -> str:
        before = snapshot(user)
        code, out, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args, out, err)
        assert len(lines) == 1 and lines[0].startswith("gridlens: error: "), err
        assert "Traceback" not in err and "weights_only=False" not in err
        assert re.search(expect, lines[0]), (expect, lines[0])
        assert not (user / "PAYLOAD_RAN").exists(), "a pickle ran code"
        after = snapshot(user)
        assert {k: after.get(k) for k in before} == before, "a file of the user's changed"
        return lines[0]

    return refuse


# ----------------------------------------------------------------------------- malicious files


@pytest.mark.parametrize("name", ["evil.pt", "evil_raw.pth"])
def test_a_pickle_that_runs_code_is_refused_by_every_loader(cli, user, tmp_path, name):
    evil = str(user / name)
    refused = "refused to load|corrupted or unreadable"
    cli("model", "info", evil, expect=refused)
    cli("model", "convert", evil, str(tmp_path / "x"), expect=refused)
    cli("eval", evil, expect=refused)
    cli("train", "--out", str(tmp_path / "run"), "--resume-from", evil, expect=refused)
    cli("world", "check", "frame", evil, expect=refused)
    cli("culture", "import", evil, "--population", str(user / "population"), expect=refused)
    cli("sae", "steer", "--direction", evil, "--out", str(tmp_path / "s"), "--n-per-task", "1",
        expect=refused)  # fmt: skip


def test_groundtruth_resume_never_unpickles_code(cli, user, tmp_path):
    out = tmp_path / "gt"
    (out / "checkpoint").mkdir(parents=True)
    shutil.copy(user / "evil.pt", out / "checkpoint" / "train_state.pt")
    args = ["groundtruth", "train", "--out", str(out), "--n-train", "64", "--n-val", "16",
            "--batch-size", "32", "--max-epochs", "1"]  # fmt: skip
    cli(*args, expect="train_state.pt: refused to load: the pickle would call or build io.open")
    (out / "checkpoint" / "train_state.pt").write_text("garbage")
    cli(*args, expect="train_state.pt: corrupted or unreadable")
    torch.save({"model": {}, "epoch": "six"}, out / "checkpoint" / "train_state.pt")
    cli(*args, expect="train_state.pt: field 'history'")


def test_no_pickle_is_read_but_weights_only():
    sources = {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}
    calls = {name for name, text in sources.items() if re.search(r"torch\.load\((?!weights)", text)}
    assert calls == {"integrity.py"}  # the one loader, weights_only=True
    assert "weights_only=True)" in sources["integrity.py"]
    for text in sources.values():
        assert "weights_only=False" not in text and "pickle.load" not in text
        assert not re.search(r"allow_pickle\s*=\s*True", text)


# ----------------------------------------------------------------------------- garbage files


def test_garbage_truncated_and_wrong_shape_files(cli, user, tmp_path):
    cli("model", "info", str(user / "passwd"), expect="passwd: corrupted or unreadable")
    cli("model", "info", str(user / "garbage.pt"), expect="corrupted or unreadable")
    cli("model", "info", str(user / "truncated"), expect="truncated or corrupt")
    cli("model", "info", str(user / "model" / "config.json"), expect="")
    cli("train", "--out", str(tmp_path / "r"), "--resume-from", "/etc/passwd",
        expect="corrupted or unreadable")  # fmt: skip
    cli("eval", str(user / "wrong_shape.pt"), expect="weights do not fit its config")
    cli("culture", "import", str(user / "passwd"), "--population", str(user / "population"),
        expect="corrupted or unreadable")  # fmt: skip
    direction = ["sae", "steer", "--out", str(tmp_path / "s"), "--n-per-task", "1", "--direction"]
    cli(*direction, str(user / "garbage.pt"), expect="corrupted or unreadable")
    cli(*direction, str(user / "garbage.npy"), expect="not a readable .npy")
    cli("world", "check", "frame", str(user / "garbage.npy"), expect="cannot read tokens")
    run_dir = tmp_path / "gt"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"format": "gridlens-groundtruth-1", "config": []}')
    cli("groundtruth", "eval", "--run", str(run_dir), expect="field 'benchmark' is missing")


def test_flipped_bytes_in_tensor_data_are_caught(cli, user, tmp_path):
    cli("model", "info", str(user / "flipped"), expect="checksum mismatch")
    cli("eval", str(user / "flipped.pt"), expect="flipped.pt: checksum mismatch")
    cli("sae", "steer", "--sae", str(user / "sae_flipped"), "--latents", "0", "--out",
        str(tmp_path / "s"), "--n-per-task", "1", expect="checksum mismatch")  # fmt: skip
    pop = tmp_path / "pop"
    shutil.copytree(user / "population", pop)
    member = sorted((pop / "models").glob("*.pt"))[0]
    weights = torch.load(member, weights_only=True)["model"]["embed.weight"]
    flip_byte(member, weights.numpy().tobytes())
    cli("culture", "run", "--out", str(pop), "--resume", "--no-progress",
        expect="checksum mismatch")  # fmt: skip


def test_a_damaged_culture_round_file_is_caught(tmp_path):
    from gridlens.training.culture.store import CultureSet, load_part, save_part
    from gridlens.world import generate

    tokens = generate("frame", 3, seed=0).tokens
    part = CultureSet(tokens, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                      torch.zeros(3, dtype=torch.long), torch.full((3, 2), 0.5),
                      torch.zeros(3, dtype=torch.long))  # fmt: skip
    path = save_part(tmp_path, "round_00001", part, {})
    assert torch.equal(load_part(path, 2, 10, 10).tokens, tokens)
    flip_byte(path, tokens.numpy().tobytes())
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_part(path, 2, 10, 10)


# ----------------------------------------------------------------------------- culture state


def _edit_state(pop: Path, edit) -> None:
    state = json.loads((pop / "state.json").read_text())
    edit(state)
    (pop / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda s: s["members"][0].update(epochs=None), r"members\[0\].epochs"),
        (lambda s: s.update(round="six"), "'round' must be an integer"),
        (lambda s: s["members"][1].pop("file"), r"members\[1\].file"),
        (lambda s: s["members"][0].update(file="../../outside.pt"), r"members\[0\].file"),
        (lambda s: s.update(culture_parts=["../../outside"]), "'culture_parts'"),
        (lambda s: s.update(members=[]), "'members' must be a list of 2"),
    ],
)
def test_culture_state_of_the_wrong_type_or_outside_the_folder(cli, user, tmp_path, edit, expect):
    pop = tmp_path / "a" / "b" / "pop"
    shutil.copytree(user / "population", pop)
    member = sorted((pop / "models").glob("*.pt"))[0]
    shutil.copy(member, tmp_path / "a" / "outside.pt")  # readable, were it ever read
    _edit_state(pop, edit)
    cli("culture", "run", "--out", str(pop), "--resume", "--no-progress", expect=expect)


def test_culture_resume_of_no_population_is_refused(cli, tmp_path):
    cli("culture", "run", "--out", str(tmp_path / "new"), "--resume", expect="no population")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "args",
    [
        ["world", "show", "-n", "1", "--out", UNWRITABLE + ".png"],
        ["world", "dataset", UNWRITABLE, "-n", "10"],
        ["train", "--out", UNWRITABLE],
        ["eval", "default", "--json", UNWRITABLE + ".json"],
        ["eval", "default", "--out", UNWRITABLE],
        ["eval", "default", "--bars", UNWRITABLE + ".png"],
        ["model", "convert", "default", UNWRITABLE],
        ["sae", "train", "--out", UNWRITABLE],
        ["report", "--out", UNWRITABLE],
        ["analyze", "ablate", "--out", UNWRITABLE],
        ["groundtruth", "train", "--out", UNWRITABLE],
        ["culture", "run", "--out", UNWRITABLE],
    ],
)
def test_an_impossible_output_fails_before_any_work(cli, args):
    cli(*args, expect="cannot write in /proc")


def test_an_output_under_a_file_fails_before_any_work(cli, user, tmp_path):
    cli("train", "--out", str(user / "passwd" / "run"), expect="passwd is not a folder")
    cli("analyze", "ablate", "--out", str(user / "passwd"), expect="exists and is not a folder")


def test_train_refuses_a_folder_of_other_files_and_an_empty_path(cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    before = snapshot(mine)
    cli("train", "--out", str(mine), "--steps", "1", expect="not empty and not a training run")
    assert snapshot(mine) == before
    cli("train", "--out", "", expect="empty output path")


def test_a_write_that_fails_at_the_end_saves_the_results_elsewhere(
    capsys, monkeypatch, user, tmp_path
):
    from gridlens.training import commands

    target = tmp_path / "eval.json"
    real = commands.atomic_write

    def disk_full(path, write):
        if Path(path) == target:
            raise OSError(28, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(commands, "atomic_write", disk_full)
    code, _, err = run(capsys, "eval", str(user / "model"), "--tasks", "replace_color",
                       "-n", "1", "--structures", "forward", "--test-pool", "5", "--no-sampled",
                       "--json", str(target))  # fmt: skip
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last.startswith("gridlens: error: ") and "Traceback" not in err, err
    saved = Path(re.search(r"saved to (\S+) instead", last).group(1)) / "eval.json"
    assert "No space left on device" in last and not target.exists()
    assert "accuracy" in json.dumps(json.loads(saved.read_text()))
    shutil.rmtree(saved.parent)


# ----------------------------------------------------------------------------- absurd numbers


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["world", "show", "-n", "1", "--height", "100000", "--width", "100000"], "needs about"),
        (["train", "--out", "{tmp}/r", "--steps", "10", "--batch-size", "10" * 6], "needs about"),
        (["train", "--out", "{tmp}/run", "--steps", "1000000000000"], "never finish"),
        (["eval", "default", "-n", "1000000000000"], "needs about .* of memory"),
        (["culture", "run", "--out", "{tmp}/pop", "--set", "k=1000000000000"], "needs about"),
    ],
)
def test_absurd_sizes_are_refused_with_the_estimate(cli, tmp_path, args, expect):
    cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], expect=expect)
    assert list(tmp_path.iterdir()) == []  # nothing written, no culture.json to block a rerun


@pytest.mark.parametrize(
    ("option", "expect"),
    [
        (["--max-epochs", "0"], "max_epochs must be >= 1"),
        (["--max-epochs", "-1"], "max_epochs must be >= 1"),
        (["--n-train", "0"], "n_train_per_task must be >= 1"),
        (["--n-train", "8"], "no batch of 256"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--betas", "2,3"], r"betas must be two numbers in \[0, 1\)"),
        (["--weights", "1,nan,1"], "loss weights"),
    ],
)
def test_groundtruth_refuses_nonsense_numbers(cli, tmp_path, option, expect):
    cli("groundtruth", "train", "--out", str(tmp_path / "gt"), *option, expect=expect)
    assert not (tmp_path / "gt").exists()


# ----------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(folder, 30, tasks="frame", shard_size=10, seed=0, progress=False)
    return folder


def _edited_manifest(dataset: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda m: m["shards"].pop(1), r"shards \[1\] are missing"),
        (lambda m: m["shards"].append(m["shards"][0]), r"shards \[0\] are listed more than once"),
        (lambda m: m["shards"][2].update(count=11), r"shards \[2\] have an index or count"),
        (lambda m: m["config"].update(height="ten"), "malformed 'config'"),
    ],
)
def test_a_tampered_manifest_is_refused(dataset, tmp_path, edit, expect):
    assert len(open_dataset(dataset)) == 30
    with pytest.raises(DatasetError, match=expect):
        open_dataset(_edited_manifest(dataset, tmp_path, edit))


def test_a_shard_that_is_a_folder_is_a_clear_error(dataset, tmp_path):
    copy = _edited_manifest(dataset, tmp_path, lambda m: None)
    (copy / "shard-00001.safetensors").unlink()
    (copy / "shard-00001.safetensors").mkdir()
    with pytest.raises(DatasetError, match=r"shard-00001\.safetensors: cannot read the shard"):
        open_dataset(copy).verify()


def test_dataset_command_refuses_a_manifest_of_the_wrong_type(cli, dataset, tmp_path):
    copy = _edited_manifest(dataset, tmp_path, lambda m: m["config"].update(height="ten"))
    cli("world", "dataset", str(copy), "-n", "30", "--tasks", "frame", "--shard-size", "10",
        "--no-progress", expect="malformed 'config'")  # fmt: skip


# ----------------------------------------------------------------------------- internal errors


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from gridlens.world import tasks

    def broken(name):
        raise RuntimeError("boom")

    monkeypatch.setattr(tasks, "get_task", broken)
    code, _, err = run(capsys, "world", "tasks")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("gridlens: internal error: RuntimeError: boom") and "--debug" in err
    code, _, err = run(capsys, "--debug", "world", "tasks")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err
