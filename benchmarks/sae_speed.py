"""SAE training speed against SAELens 6, in one process, same data, same machine.

(a) --part step: the optimisation step alone, per architecture. Both sides get the same
    activation batches (the default model's blocks.3.hook_mlp_out at the predicted grid's cells,
    normalised so E||x||^2 = d_in). Ours = gridlens.sae.train.train_step (loss, backward,
    decoder-norm constraint, Adam) plus the dead-latent counter update of the training loop;
    SAELens = SAETrainer.step (training_forward_pass, firing statistics, backward, gradient
    clipping, Adam, schedulers) on its TrainingSAE of the same architecture. No latent is dead
    within the timed steps on either side, so neither runs its dead-latent auxiliary loss.
(b) --part e2e: fresh quizzes -> model -> SAE (TopK). Ours = gridlens.sae.train.train_sae
    (ActivationStore streaming quizzes from the generator through GridGPT). SAELens =
    LanguageModelSAETrainingRunner driving the TransformerLens export of the same model
    (`model.to_transformer_lens()`); SAELens reads text or token datasets only, so the quizzes
    are generated up front with our generator (timed, and counted on SAELens's side), shifted
    to the TL input (`to_tl_input`), and passed as a pre-tokenised `datasets.Dataset` with a
    "tokens" column (`override_dataset`), context_size 404, `seqpos_slice` = the predicted grid,
    prepend_bos False, no wandb, no evals, no checkpoints.

    OMP_NUM_THREADS=1 python benchmarks/sae_speed.py --threads 1
Clock: process CPU time (steadier than wall time on a shared machine) and wall time.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
import warnings

import torch

from gridlens.models.checkpoints import load
from gridlens.sae.activations import collect
from gridlens.sae.gated import build_sae
from gridlens.sae.model import SAEConfig
from gridlens.sae.train import SAETrainConfig, train_sae, train_step
from gridlens.world import generate

# topk-sparse: our TopK against SAELens's TopK with use_sparse_activations=True (its COO path)
# topk-ghost: our TopK with improved ghost grads (half the latents marked dead) instead of AuxK
# topk-auxk: our TopK with its AuxK loss on the same half of the latents marked dead
# gated-trained: gated after 1000 untimed training steps steered to L0 = k (a trained gated
# SAE's sparsity, where our sparse kernels take over), the same weights on both sides
ARCHS = (
    "relu",
    "topk",
    "topk-sparse",
    "batchtopk",
    "jumprelu",
    "gated",
    "gated-trained",
    "topk-ghost",
    "topk-auxk",
)
HOOK = "blocks.3.hook_mlp_out"


def clocks():
    return time.process_time(), time.perf_counter()


def activations(model, rows: int, seed: int) -> torch.Tensor:
    """`rows` real activation rows (normalised), from freshly generated quizzes."""
    quizzes = generate("default", rows // 100 + 1, seed=seed).tokens
    x = collect(model, quizzes, HOOK, "grid", batch_size=64)[:rows]
    return x * (x.shape[1] / x.pow(2).sum(1).mean()).sqrt()


@torch.no_grad()
def mean_l0(sae, x: torch.Tensor) -> float:
    return float((sae.encode(x) > 0).sum(-1).float().mean())


def settle_gated(sae, opt, x: torch.Tensor, cfg: SAETrainConfig, k: int, steps: int = 1000):
    """Train a gated SAE (untimed, batches of 512 rows of x) until about k gates open per row,
    as in a trained gated SAE, steering the L1 coefficient towards that every 100 steps;
    returns the config with the coefficient it ended at."""
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        result = train_step(sae, opt, x[torch.randint(len(x), (512,), generator=generator)], cfg)
        if step % 100 == 0:
            l1 = cfg.l1_coefficient * (float(result.l0) / k) ** 0.5
            cfg = cfg.replace(l1_coefficient=l1)
    return cfg


def sae_lens_trainer(arch: str, d_in: int, d_sae: int, k: int, batch: int):
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = {
        "relu": lambda: sae_lens.StandardTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, l1_coefficient=5.0
        ),
        "topk": lambda: sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k),
        "topk-sparse": lambda: sae_lens.TopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, use_sparse_activations=True
        ),
        "batchtopk": lambda: sae_lens.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k),
        "jumprelu": lambda: sae_lens.JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae),
        "gated": lambda: sae_lens.GatedTrainingSAEConfig(d_in=d_in, d_sae=d_sae),
        "gated-trained": lambda: sae_lens.GatedTrainingSAEConfig(d_in=d_in, d_sae=d_sae),
        "topk-ghost": lambda: sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k),
        "topk-auxk": lambda: sae_lens.TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k),
    }[arch]()
    sae = sae_lens.TrainingSAE.from_dict(cfg.to_dict())
    trainer_cfg = SAETrainerConfig(
        total_training_samples=10**9,
        train_batch_size_samples=batch,
        lr=1e-3,
        lr_end=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(trainer_cfg, sae, data_provider=iter(()))


def bench_steps(model, args) -> list[str]:
    lines = []
    ours_ms: dict[str, float] = {}
    batches = activations(model, args.batch * args.n_batches, seed=11).split(args.batch)
    train_cfg = SAETrainConfig(tokens=args.batch * 10**6, batch_size=args.batch, lr=1e-3)
    for d_sae in args.sizes:
        for arch in args.archs:
            ours_arch = arch.split("-")[0]  # the variants above add a "-suffix"
            sae = build_sae(SAEConfig(128, d_sae, ours_arch, HOOK, k=args.k), seed=0).train()
            opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
            ghost = arch.endswith("-ghost")
            cfg = train_cfg.replace(ghost_grads="improved") if ghost else train_cfg
            if arch == "gated-trained":  # go on from the settled state, optimiser included
                cfg = train_cfg.replace(l1_coefficient=args.gated_l1)
                cfg = settle_gated(sae, opt, torch.cat(batches), cfg, args.k)
                l0_before = mean_l0(sae, batches[0])
            since_fired = torch.zeros(d_sae, dtype=torch.long)
            half_dead = ghost or arch.endswith("-auxk")
            dead = (torch.arange(d_sae) % 2 == 0) if half_dead else None

            def ours(x, sae=sae, opt=opt, since_fired=since_fired, cfg=cfg, dead=dead):
                result = train_step(sae, opt, x, cfg, dead, 1.0)
                since_fired += x.shape[0]
                since_fired[result.fired] = 0

            trainer = sae_lens_trainer(arch, 128, d_sae, args.k, args.batch)
            if arch == "gated-trained":
                trainer.sae.load_state_dict(sae.state_dict())

            def theirs(x, trainer=trainer):
                trainer.step(x)
                trainer.n_training_steps += 1

            times = {"ours": [], "SAELens": []}
            ours(batches[0])  # warm-up
            try:
                theirs(batches[0])
            except (NotImplementedError, RuntimeError) as error:  # SAELens's COO path on CPU
                line = f"{arch:11s} d_sae {d_sae:5d}: SAELens fails: {str(error).split('. ')[0]}"
                print(line, flush=True)
                lines.append(line)
                continue
            for rep in range(args.repeats):
                for name, fn in (("ours", ours), ("SAELens", theirs)):
                    c0, w0 = clocks()
                    for i in range(args.steps):
                        fn(batches[(rep * args.steps + i) % len(batches)])
                    c1, w1 = clocks()
                    times[name].append(((c1 - c0) / args.steps, (w1 - w0) / args.steps))
            cpu = {n: statistics.median(t[0] for t in v) for n, v in times.items()}
            ours_ms[arch] = cpu["ours"]
            wall = {n: statistics.median(t[1] for t in v) for n, v in times.items()}
            line = (
                f"{arch:11s} d_sae {d_sae:5d}: ours {args.batch / cpu['ours']:10,.0f} tok/s "
                f"({cpu['ours'] * 1e3:6.1f} ms)  SAELens {args.batch / cpu['SAELens']:10,.0f} "
                f"tok/s ({cpu['SAELens'] * 1e3:6.1f} ms)  "
                f"ratio {cpu['SAELens'] / cpu['ours']:4.2f}x "
                f"(wall {wall['SAELens'] / wall['ours']:4.2f}x)"
            )
            if arch == "gated-trained":
                l0_after = mean_l0(sae, batches[0])
                line += f"  L0 {l0_before:.1f} before the steps, {l0_after:.1f} after"
            print(line, flush=True)
            lines.append(line)
        for arch, base in (("gated", "topk"), ("gated-trained", "topk"), ("topk-ghost", "topk"),
                           ("topk-ghost", "topk-auxk")):  # fmt: skip
            if arch in ours_ms and base in ours_ms:
                line = f"{arch} d_sae {d_sae}: {ours_ms[arch] / ours_ms[base]:.2f}x our {base} step"
                print(line, flush=True)
                lines.append(line)
    return lines


def bench_e2e(model, args) -> list[str]:
    import datasets
    import sae_lens
    from sae_lens.config import LoggingConfig

    from gridlens.models.transformer_lens import to_tl_input

    tokens = args.e2e_tokens
    sae_cfg = SAEConfig(128, args.e2e_d_sae, "topk", HOOK, k=args.k)
    train_cfg = SAETrainConfig(
        tokens=tokens,
        batch_size=args.batch,
        lr=1e-3,
        warmup_steps=0,
        positions="grid",
        device="cpu",
        progress=False,
        log_every=10**9,
        checkpoint_every=10**9,
    )
    c0, w0 = clocks()
    train_sae(model, sae_cfg, train_cfg, progress=False)
    c1, w1 = clocks()
    ours_cpu, ours_wall = c1 - c0, w1 - w0

    tl_model = model.to_transformer_lens()
    c0, w0 = clocks()
    n_quizzes = tokens // 100 + 64  # 100 rows per quiz (the predicted grid), plus buffer slack
    quiz_tokens = to_tl_input(generate("default", n_quizzes, seed=5, structure="mix").tokens)
    dataset = datasets.Dataset.from_dict({"tokens": quiz_tokens.tolist()})
    cfg = sae_lens.LanguageModelSAERunnerConfig(
        sae=sae_lens.TopKTrainingSAEConfig(d_in=128, d_sae=args.e2e_d_sae, k=args.k),
        model_name="gridlens-default",
        hook_name=HOOK,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=404,
        seqpos_slice=(304, 404),
        prepend_bos=False,
        training_tokens=tokens,
        train_batch_size_tokens=args.batch,
        store_batch_size_prompts=128,  # as our store's model_batch
        n_batches_in_buffer=512,  # SAELens's buffer holds this x 100 rows: ours holds 512 quizzes
        lr=1e-3,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=None,
        verbose=False,
    )
    runner = sae_lens.LanguageModelSAETrainingRunner(
        cfg, override_dataset=dataset, override_model=tl_model
    )
    runner.run()
    c1, w1 = clocks()
    theirs_cpu, theirs_wall = c1 - c0, w1 - w0
    line = (
        f"end to end, topk d_sae {args.e2e_d_sae}, {tokens:,} tokens: ours "
        f"{tokens / ours_cpu:,.0f} tok/s ({ours_cpu:.1f} CPU-s, {ours_wall:.1f} s wall)  SAELens "
        f"{tokens / theirs_cpu:,.0f} tok/s ({theirs_cpu:.1f} CPU-s, {theirs_wall:.1f} s wall)  "
        f"ratio {theirs_cpu / ours_cpu:.2f}x (wall {theirs_wall / ours_wall:.2f}x)"
    )
    print(line, flush=True)
    return [line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("step", "e2e", "all"), default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument(
        "--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1024, 4096]
    )
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument(
        "--gated-l1", type=float, default=0.7, help="gated-trained: first L1 coefficient"
    )
    parser.add_argument("--archs", type=lambda s: s.split(","), default=list(ARCHS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-batches", type=int, default=3)
    parser.add_argument("--e2e-tokens", type=int, default=40 * 4096)
    parser.add_argument("--e2e-d-sae", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    import sae_lens

    print(
        f"torch {torch.__version__}, sae_lens {sae_lens.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} thread(s), batch {args.batch}, d_in 128, k {args.k}",
        flush=True,
    )
    model = load("default")
    if args.part in ("step", "all"):
        bench_steps(model, args)
    if args.part in ("e2e", "all"):
        bench_e2e(model, args)


if __name__ == "__main__":
    main()
