"""The culture loop (`gridlens culture run`): a population of GPTs that trains on world quizzes,
and, whenever every model is accurate, makes quizzes of its own that join everyone's data.

Each round: if every model's test accuracy is at least the threshold, the population makes a
culture round (candidates.py) and every accuracy is reset so each model retrains on the grown
culture; then the weakest model trains one epoch and is tested. As in the original, culture
quizzes are at most half of an epoch's data and half of the test set.

On disk (POP/): `culture.json` (format, version, settings), `state.json` (completed rounds,
each model's file, epochs and accuracy, the committed culture rounds), `models/model_K_eE.pt`,
`culture/round_R.safetensors`, `history.jsonl` (one record per round). A round's files are
written first and `state.json` last, atomically, and only then are superseded files removed:
a run killed at any moment resumes from the last state, never duplicating or losing quizzes.

Differences from the original, on purpose: the generating model is the one drawn for each
attempt (the original passes a leftover variable and always generates with the same model),
every model generates in each attempt (batched), optimiser state persists across a model's
epochs (the original builds a new Adam each epoch), and test accuracy is greedy on clean
prompts (the original samples at temperature 1 with prompt noise).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gridlens.errors import CheckpointError, ConfigError
from gridlens.integrity import load_pickle, seal_payload, verify_payload
from gridlens.io import atomic_write
from gridlens.models import GridGPT
from gridlens.models.generate import complete, last_grid_positions
from gridlens.training.checkpoint import restore
from gridlens.training.culture import candidates as cd
from gridlens.training.culture.config import FORMAT, POLICY, VERSION, CultureConfig
from gridlens.training.culture.store import (
    LABELS,
    NOVEL,
    CultureSet,
    checker_labels,
    culture_path,
    load_original,
    load_part,
    save_part,
)
from gridlens.training.data import QuizStream, derive_seed, quiz_hash
from gridlens.training.trainer import sequence_loss
from gridlens.world import generate
from gridlens.world.structures import STRUCTURE_NAMES

_TAGS = {"test": 0x43545354, "round": 0x43524E44, "epoch": 0x43455043, "init": 0x43494E49}
PREDICTING = ("forward", "inverse", "backward", "backward_inverse")


@dataclass
class Member:
    model: GridGPT
    optimizer: torch.optim.Optimizer
    epochs: int = 0
    accuracy: float = 0.0
    world_accuracy: float = 0.0
    culture_accuracy: float | None = None
    file: str = ""


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


class Population:
    """A population directory: models, culture sets, state; created fresh or reopened."""

    def __init__(self, out: str | Path, cfg: CultureConfig, device: str | torch.device = "cpu"):
        self.out, self.cfg, self.device = Path(out), cfg, torch.device(device)
        self.members: list[Member] = []
        self.culture = CultureSet()
        self.committed: list[str] = []  # culture part names, in the order they were added
        self.round = 0
        h, w = cfg.height, cfg.width
        test = generate(
            cfg.tasks,
            cfg.test_quizzes,
            seed=derive_seed(_TAGS["test"], cfg.seed),
            structure=list(PREDICTING),
            height=h,
            width=w,
        )
        self.test_tokens = test.tokens
        self.test_hashes = quiz_hash(test.grids)

    # ------------------------------------------------------------------ creation / resume

    @classmethod
    def open(
        cls, out: str | Path, cfg: CultureConfig, resume: bool, device="cpu", read_only=False
    ) -> Population:
        """A new population, or (``resume``) the one in ``out``. ``read_only`` (readers such as
        reports): write nothing and delete nothing, since a run may be writing the folder."""
        out = Path(out)
        index = out / "culture.json"
        if index.exists() and not resume:
            raise ConfigError(f"{out}: already holds a population; pass --resume or another --out")
        if resume and not index.exists():
            raise ConfigError(
                f"{out}: no population to resume (no culture.json); drop --resume to start one"
            )
        if resume:
            saved = _read_json(index)
            if saved.get("format") != FORMAT or saved.get("version") != VERSION:
                raise CheckpointError(
                    f"{index}: not a gridlens culture population of version {VERSION} "
                    f"(format {saved.get('format')!r}, version {saved.get('version')!r})"
                )
            old = CultureConfig.from_dict(saved.get("config", {}), str(index))
            diffs = old.differences(cfg, ignore=POLICY)
            if diffs:
                raise ConfigError(
                    f"{out}: this population was made with other settings: " + "; ".join(diffs)
                )
            population = cls(out, cfg, device)
            population._load_state(tidy=not read_only)
            changed = old.differences(cfg, ignore=("rounds",))
            if changed and not read_only:  # a new policy from this round on, recorded
                saved["config"] = cfg.to_dict()
                saved.setdefault("policy_changes", []).append(
                    {"round": population.round, "changes": changed}
                )
                _write_json(index, saved)
            return population
        out.mkdir(parents=True, exist_ok=True)
        _write_json(index, {"format": FORMAT, "version": VERSION, "config": cfg.to_dict()})
        population = cls(out, cfg, device)
        population._init_members()
        population._commit()
        return population

    def _new_member(self, k: int) -> Member:
        seed = int(derive_seed(_TAGS["init"], self.cfg.seed, k).integers(2**31))
        model = GridGPT(self.cfg.model, seed=seed, n_ctx=4 * (1 + self.cfg.height * self.cfg.width))
        model.to(self.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.cfg.lr)
        return Member(model, optimizer)

    def _init_members(self) -> None:
        self.members = [self._new_member(k) for k in range(self.cfg.k)]
        for k, member in enumerate(self.members):
            self._save_member(k, member)

    def _member_path(self, k: int, epochs: int) -> Path:
        return self.out / "models" / f"model_{k}_e{epochs:05d}.pt"

    def _save_member(self, k: int, member: Member) -> None:
        path = self._member_path(k, member.epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": member.model.state_dict(),
            "optimizer": member.optimizer.state_dict(),
            "epochs": member.epochs,
        }
        atomic_write(path, lambda handle: torch.save(seal_payload(payload), handle))
        member.file = path.name

    def _load_state(self, tidy: bool = True) -> None:
        """Load the committed state; ``tidy``: then drop files and history lines written after
        the last commit (what an interrupted round left behind)."""
        state = _checked_state(self.out / "state.json", self.cfg.k)
        self.members = []
        for k, row in enumerate(state["members"]):
            member = self._new_member(k)
            path = self.out / "models" / row["file"]
            payload = load_pickle(path, "culture model")
            verify_payload(payload, path)
            restore(member.model, member.optimizer, payload, f"model {k} of {self.out}")
            member.epochs, member.accuracy = row["epochs"], float(row["accuracy"])
            member.world_accuracy = float(row.get("world_accuracy", 0.0))
            member.culture_accuracy = row.get("culture_accuracy")
            member.file = row["file"]
            self.members.append(member)
        self.round = state["round"]
        self.committed = list(state.get("culture_parts", []))
        for name in self.committed:
            part = load_part(
                culture_path(self.out, name), self.cfg.k, self.cfg.height, self.cfg.width
            )
            self.culture = self.culture.extend(part)
        if tidy:
            self._clean()
            _trim_history(self.out / "history.jsonl", self.round)

    def _commit(self) -> None:
        """Write state.json (the commit point), then drop files it no longer names."""
        _write_json(
            self.out / "state.json",
            {
                "round": self.round,
                "members": [
                    {
                        "file": m.file,
                        "epochs": m.epochs,
                        "accuracy": m.accuracy,
                        "world_accuracy": m.world_accuracy,
                        "culture_accuracy": m.culture_accuracy,
                    }
                    for m in self.members
                ],
                "culture_parts": self.committed,
                "culture_size": {"train": len(self.culture.train), "test": len(self.culture.test)},
            },
        )
        self._clean()

    def _clean(self) -> None:
        keep = {m.file for m in self.members}
        for path in (self.out / "models").glob("model_*.pt"):
            if path.name not in keep:
                path.unlink(missing_ok=True)
        named = {culture_path(self.out, name).name for name in self.committed}
        for path in (self.out / "culture").glob("*.safetensors"):
            if path.name not in named:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ data

    def _restructure_random(
        self, canonical: torch.Tensor, names: tuple[str, ...], noise: float, rng
    ) -> torch.Tensor:
        """Each quiz in a structure drawn from `names`, with prompt noise where it applies."""
        h, w = self.cfg.height, self.cfg.width
        out = canonical.clone()
        pick = rng.integers(0, len(names), size=len(canonical))
        for s, name in enumerate(names):
            rows = torch.from_numpy(np.flatnonzero(pick == s))
            if len(rows):
                part = cd.restructure(canonical[rows], name, h, w)
                if noise > 0:
                    part = cd.add_prompt_noise(part, name, noise, rng, h, w)
                out[rows] = part
        return out

    def epoch_data(self, k: int, epoch: int) -> torch.Tensor:
        """Model k's training quizzes for its epoch `epoch` (deterministic)."""
        cfg = self.cfg
        rng = derive_seed(_TAGS["epoch"], cfg.seed, k, epoch)
        stream = QuizStream(
            cfg.tasks,
            STRUCTURE_NAMES,
            cfg.prompt_noise,
            cfg.train_quizzes,
            seed=int(derive_seed(_TAGS["epoch"], cfg.seed, k).integers(2**31)),
            exclude=self.test_hashes,
            height=cfg.height,
            width=cfg.width,
        )
        world = stream.batch(epoch)
        culture = self.culture.train
        if len(culture):
            n = min(len(culture), cfg.train_quizzes // 2)
            chosen = culture[torch.from_numpy(rng.permutation(len(culture))[:n])]
            chosen = self._restructure_random(chosen, STRUCTURE_NAMES, cfg.prompt_noise, rng)
            world = torch.cat([world[: len(world) - n], chosen])
        return world[torch.from_numpy(rng.permutation(len(world)))]

    def test_data(self) -> tuple[torch.Tensor, int]:
        """World test quizzes plus culture test quizzes (at most half), and how many are world."""
        culture = self.culture.test
        if not len(culture):
            return self.test_tokens, len(self.test_tokens)
        rng = derive_seed(_TAGS["test"], self.cfg.seed, len(culture))
        n = min(len(culture), len(self.test_tokens) // 2)
        chosen = culture[torch.from_numpy(rng.permutation(len(culture))[:n])]
        chosen = self._restructure_random(chosen, PREDICTING, 0.0, rng)
        world = self.test_tokens[: len(self.test_tokens) - n]
        return torch.cat([world, chosen]), len(world)

    # ------------------------------------------------------------------ steps

    def train_epoch(self, k: int, progress: bool) -> float:
        member, cfg = self.members[k], self.cfg
        tokens = self.epoch_data(k, member.epochs)
        model = member.model.train()
        total, steps = 0.0, 0
        batches = range(0, len(tokens), cfg.batch_size)
        bar = tqdm(
            batches, desc=f"model {k} epoch {member.epochs}", leave=False, disable=not progress
        )
        for lo in bar:
            batch = tokens[lo : lo + cfg.batch_size].to(self.device)
            loss = sequence_loss(model(batch), batch)
            member.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            member.optimizer.step()
            value = float(loss.detach())
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{value:.4f}")
        member.epochs += 1
        return total / max(steps, 1)

    @torch.no_grad()
    def test(self, k: int) -> None:
        member = self.members[k]
        tokens, n_world = self.test_data()
        correct = []
        for lo in range(0, len(tokens), 256):
            chunk = tokens[lo : lo + 256].to(self.device)
            out = complete(member.model.eval(), chunk)
            cells = last_grid_positions(chunk.shape[1])
            correct.append((out[:, cells] == chunk[:, cells]).all(1).cpu())
        ok = torch.cat(correct).float()
        member.accuracy = float(ok.mean())
        member.world_accuracy = float(ok[:n_world].mean())
        member.culture_accuracy = float(ok[n_world:].mean()) if len(ok) > n_world else None

    def make_culture(self, progress: bool) -> tuple[CultureSet, dict[str, Any]]:
        """One culture round: generate, filter, score and keep candidates until the quota."""
        cfg, h, w = self.cfg, self.cfg.height, self.cfg.width
        quota = cfg.culture_train + cfg.culture_test
        rng = derive_seed(_TAGS["round"], cfg.seed, self.round)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(int(rng.integers(2**62)))
        models = [m.model for m in self.members]
        kept: list[CultureSet] = []
        stats = {"candidates": 0, "malformed": 0, "trivial": 0, "scored": 0, "kept": 0}
        start = time.perf_counter()
        bar = tqdm(
            total=quota, desc=f"culture round {self.round}", leave=False, disable=not progress
        )
        attempts = 0
        for _ in range(cfg.max_attempts):
            attempts += 1
            parts = [
                cd.generate_candidates(
                    model,
                    cfg.candidates_per_model,
                    cfg.temperature_hot,
                    cfg.temperature_cold,
                    generator,
                    h,
                    w,
                )
                for model in models
            ]
            quizzes = torch.cat(parts)
            source = torch.arange(len(models)).repeat_interleave(cfg.candidates_per_model)
            formed = cd.well_formed(quizzes, h, w)
            trivial = torch.zeros_like(formed)
            trivial[formed] = cd.trivial(quizzes[formed], h, w)
            ok = formed & ~trivial
            stats["candidates"] += len(quizzes)
            stats["malformed"] += int((~formed).sum())
            stats["trivial"] += int(trivial.sum())
            stats["scored"] += int(ok.sum())
            quizzes, source = quizzes[ok], source[ok]
            probas = cd.score(models, quizzes, cfg.prompt_noise, cfg.noise_rounds, rng, h, w)
            verdict = cd.validate(
                probas, cfg.proba_understands, cfg.proba_not_understands, cfg.min_fail, cfg.max_fail
            )
            n_keep = int(verdict.keep.sum())
            if n_keep:
                kept.append(
                    CultureSet(
                        quizzes[verdict.keep],
                        torch.zeros(n_keep, dtype=torch.long),
                        source[verdict.keep],
                        torch.full((n_keep,), self.round, dtype=torch.long),
                        probas[verdict.keep],
                        torch.zeros(n_keep, dtype=torch.long),
                    )
                )
            stats["kept"] += n_keep
            bar.update(min(n_keep, max(0, quota - bar.n)))
            if stats["kept"] >= quota:
                break
        bar.close()
        stats["attempts"] = attempts
        stats["seconds"] = time.perf_counter() - start
        stats["scored_per_second"] = stats["scored"] / max(stats["seconds"], 1e-9)
        new = CultureSet()
        for part in kept:
            new = new.extend(part)
        if len(new) > quota:
            new = CultureSet(*(t[:quota] for t in new._tensors()))
        n = len(new)
        if n:
            n_test = round(n * cfg.culture_test / quota) if quota else 0
            new.split[n - n_test :] = 1
            new.label = checker_labels(new.tokens, h, w)
        labels = new.labels()
        stats["added_train"] = int((new.split == 0).sum()) if n else 0
        stats["added_test"] = int((new.split == 1).sum()) if n else 0
        stats["novel"] = labels.count(NOVEL)
        stats["labels"] = {name: labels.count(name) for name in LABELS if labels.count(name)}
        return new, stats

    def import_original(self, path: str | Path) -> int:
        """Add the quizzes of an original `c_quizzes.pth` to the culture as one committed part
        (generator -1 and NaN scores: nobody in this population made or scored them)."""
        h, w = self.cfg.height, self.cfg.width
        train, test = load_original(path, h, w)
        tokens = torch.cat([train, test])
        n = len(tokens)
        if not n:
            return 0
        part = CultureSet(
            tokens,
            torch.cat([torch.zeros(len(train)), torch.ones(len(test))]).long(),
            torch.full((n,), -1, dtype=torch.long),
            torch.full((n,), self.round, dtype=torch.long),
            torch.full((n, self.cfg.k), float("nan")),
            checker_labels(tokens, h, w),
        )
        name = f"import_{self.round:05d}_{sum(c.startswith('import_') for c in self.committed)}"
        save_part(self.out, name, part, {"round": self.round, "source": str(path)})
        self.committed.append(name)
        self.culture = self.culture.extend(part)
        self._commit()
        return n

    def step(self, progress: bool) -> dict[str, Any]:
        """One round of the loop; returns its history record (already written)."""
        record: dict[str, Any] = {"round": self.round}
        start = time.perf_counter()
        if min(m.accuracy for m in self.members) >= self.cfg.accuracy_threshold:
            new, stats = self.make_culture(progress)
            record["culture"] = stats
            if len(new):
                name = f"round_{self.round:05d}"
                save_part(self.out, name, new, {"round": self.round, **stats})
                self.committed.append(name)
                self.culture = self.culture.extend(new)
            for member in self.members:
                member.accuracy = 0.0
        k = min(range(len(self.members)), key=lambda i: self.members[i].accuracy)
        record["trained"] = k
        record["loss"] = self.train_epoch(k, progress)
        self.test(k)
        self._save_member(k, self.members[k])
        self.round += 1
        record["accuracies"] = [m.accuracy for m in self.members]
        record["world_accuracies"] = [m.world_accuracy for m in self.members]
        record["culture_size"] = {"train": len(self.culture.train), "test": len(self.culture.test)}
        record["seconds"] = time.perf_counter() - start
        self._commit()
        with open(self.out / "history.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (is this a culture population directory?)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: corrupted JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


_MEMBER_FILE = re.compile(r"model_\d+_e\d{5}\.pt")
_PART_NAME = re.compile(r"(round_\d{5}|import_\d{5}_\d+)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked_state(path: Path, k: int) -> dict[str, Any]:
    """state.json, with every field the loop reads of the right type and every file it names
    inside the population folder (a name such as `../x` is refused, never read)."""
    state = _read_json(path)
    rows, parts = state.get("members"), state.get("culture_parts", [])
    problem = ""
    if not _is_int(state.get("round")) or state["round"] < 0:
        problem = "'round' must be an integer >= 0"
    elif not isinstance(rows, list) or len(rows) != k:
        problem = f"'members' must be a list of {k} entries (k={k})"
    elif not isinstance(parts, list) or not all(
        isinstance(p, str) and _PART_NAME.fullmatch(p) for p in parts
    ):
        problem = "'culture_parts' must be a list of names round_NNNNN or import_NNNNN_I"
    else:
        problem = next(filter(None, (_member_problem(row, i) for i, row in enumerate(rows))), "")
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return state


def _member_problem(row: Any, i: int) -> str:
    """What is wrong with entry `i` of state.json's members ('' if nothing)."""
    if not isinstance(row, dict):
        return f"members[{i}] must be an object"
    if not isinstance(row.get("file"), str) or not _MEMBER_FILE.fullmatch(row["file"]):
        return f"members[{i}].file must be a file name model_K_eEEEEE.pt in models/"
    if not _is_int(row.get("epochs")):
        return f"members[{i}].epochs must be an integer"
    if not _is_number(row.get("accuracy")) or not _is_number(row.get("world_accuracy", 0.0)):
        return f"members[{i}].accuracy and .world_accuracy must be numbers"
    culture = row.get("culture_accuracy")
    if culture is not None and not _is_number(culture):
        return f"members[{i}].culture_accuracy must be a number or null"
    return ""


def read_history(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / "history.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{path}: no culture history here")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the state file decides what counts
    return rows


def _trim_history(path: Path, rounds: int) -> None:
    """Keep the records of committed rounds only (a killed round may have been logged)."""
    if path.is_file():
        rows = [r for r in read_history(path.parent) if r.get("round", 0) < rounds]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(path, lambda handle: handle.write(text.encode()))


def run_culture(
    cfg: CultureConfig,
    out: str | Path,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = True,
    echo=print,
) -> dict[str, Any]:
    """Run the loop until `cfg.rounds` rounds are complete (resuming where a run stopped)."""
    population = Population.open(out, cfg, resume, device)
    if population.round:
        echo(
            f"resuming {out} at round {population.round} "
            f"({len(population.culture)} culture quizzes)"
        )
    bar = tqdm(total=cfg.rounds, initial=population.round, desc="culture", disable=not progress)
    while population.round < cfg.rounds:
        record = population.step(progress)
        bar.update(1)
        bar.set_postfix(acc=" ".join(f"{a:.2f}" for a in record["accuracies"]))
        if "culture" in record:
            c = record["culture"]
            echo(
                f"round {record['round']}: culture kept {c['kept']} of {c['scored']} scored "
                f"({c['novel']} novel), culture now {record['culture_size']}"
            )
    bar.close()
    return {
        "out": str(out),
        "rounds": population.round,
        "accuracies": [m.accuracy for m in population.members],
        "culture": {"train": len(population.culture.train), "test": len(population.culture.test)},
    }


def population_models(out: str | Path, device: str = "cpu") -> list[GridGPT]:
    """The current models of a population directory, in eval mode."""
    out = Path(out)
    index = _read_json(out / "culture.json")
    cfg = CultureConfig.from_dict(index.get("config", {}), str(out / "culture.json"))
    population = Population.open(out, cfg, resume=True, device=device, read_only=True)
    return [m.model.eval() for m in population.members]
