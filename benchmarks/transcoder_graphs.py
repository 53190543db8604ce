"""Transcoders and attribution graphs (issue 20): training-step speed and graph scores.

(a) --part step: one optimiser step of a TopK transcoder (blocks.L.ln2.hook_normalized ->
    blocks.L.hook_mlp_out of the default model, real activations), ours (gridlens.sae.train.
    train_step with a target: the sparse TopK kernels) against the dense formulation SAELens
    uses for its TopK SAEs, written here for a transcoder (dense latents scattered into
    [rows, d_sae], decoder matmul, MSE, Adam): SAELens 6.54 ships transcoder classes for
    inference only and the PyPI `sparsify` is not EleutherAI's, so neither trains one here.
    Our SAE step of the same shape is printed beside it.
(b) --part scores: build the attribution graph of a `contact` quiz's changed cell with the
    transcoders in --transcoders, and compute circuit-tracer's replacement and completeness
    scores on our adjacency with its own `compute_graph_scores` (pass --circuit-tracer, a folder
    holding the `circuit_tracer` package, e.g. `pip install --no-deps --target DIR
    circuit-tracer`), beside ours.

    OMP_NUM_THREADS=1 python benchmarks/transcoder_graphs.py --part step
    OMP_NUM_THREADS=1 python benchmarks/transcoder_graphs.py --part scores --transcoders DIR \
        --circuit-tracer DIR
Clock: process CPU time and wall time, medians over the timed steps.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from types import SimpleNamespace

import torch
from timing import timed

from gridlens.models.checkpoints import load
from gridlens.sae.activations import collect
from gridlens.sae.gated import build_sae
from gridlens.sae.model import SAEConfig
from gridlens.sae.train import SAETrainConfig, train_step
from gridlens.sae.transcoder import Transcoder, TranscoderConfig, transcoder_sites
from gridlens.world import generate


def clocks():
    return time.process_time(), time.perf_counter()


def dense_step(tc: Transcoder, optimizer, x, y, k: int) -> None:
    """The dense TopK formulation (SAELens's TrainingSAE topk), as a transcoder."""
    pre = x @ tc.W_enc + tc.b_enc
    values, index = torch.relu(pre).topk(k, dim=-1)
    latents = torch.zeros_like(pre).scatter(-1, index, values)
    loss = (latents @ tc.W_dec + tc.b_dec - y).pow(2).sum(-1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def part_step(args) -> None:
    model = load("default")
    source, target = transcoder_sites(args.layer)
    tokens = generate("default", 96, seed=0).tokens
    rows = collect(model, tokens, source, "grid", target_hook=target)
    d = model.cfg.d_model
    x, y = rows[:, :d], rows[:, d:]
    x, y = x * (d / x.pow(2).sum(-1).mean()).sqrt(), y * (d / y.pow(2).sum(-1).mean()).sqrt()
    cfg = TranscoderConfig.for_layer(args.layer, d, args.d_sae, architecture="topk", k=args.k)
    train = SAETrainConfig(batch_size=args.batch, tokens=args.batch * 10, progress=False)
    starts = range(0, len(x) - args.batch, args.batch)
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in starts]
    print(f"{platform.node()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{len(batches)} batches of {args.batch}, d_sae {args.d_sae}, k {args.k}")  # fmt: skip
    results = {}
    for name in ("ours transcoder", "dense transcoder", "ours SAE"):
        sae_cfg = SAEConfig(d, args.d_sae, architecture="topk", k=args.k)
        module = build_sae(sae_cfg) if name == "ours SAE" else Transcoder(cfg)
        opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        it = iter(batches * (args.repeats // len(batches) + 2))

        def step(name=name, module=module, opt=opt, it=it):
            bx, by = next(it)
            if name == "ours transcoder":
                train_step(module, opt, bx, train, target=by)
            elif name == "dense transcoder":
                dense_step(module, opt, bx, by, args.k)
            else:
                train_step(module, opt, by, train)

        timed(step, 3)  # warm-up
        _, wall, cpu = timed(step, args.repeats)
        results[name] = (cpu, wall)
    base = results["dense transcoder"]
    for name, (cpu, wall) in results.items():
        print(f"{name:18s} cpu {1e3 * cpu:7.1f} ms  wall {1e3 * wall:7.1f} ms  speed-up vs "
              f"dense: cpu {base[0] / cpu:4.2f}x wall {base[1] / wall:4.2f}x")  # fmt: skip


def part_scores(args) -> None:
    from gridlens.graphs.attribution import attribute, graph_scores
    from gridlens.graphs.commands import changed_cell
    from gridlens.graphs.replacement import build_replacement
    from gridlens.sae.transcoder_io import load_transcoders

    model = load("default")
    tcs = load_transcoders(args.transcoders)
    tokens = generate(["contact"], 1, seed=args.seed).tokens[0]
    position = changed_cell(tokens)
    c0, w0 = clocks()
    rm = build_replacement(model, tcs, tokens)
    graph = attribute(rm, position, max_features=args.max_features)
    c1, w1 = clocks()
    print(f"graph of contact seed {args.seed}, cell {position}: {graph.n_features} features, "
          f"{graph.size} nodes; built in cpu {c1 - c0:.1f} s, wall {w1 - w0:.1f} s")  # fmt: skip
    ours = graph_scores(graph)
    print(f"ours:            replacement {ours['replacement']:.4f}  "
          f"completeness {ours['completeness']:.4f}")  # fmt: skip
    if args.circuit_tracer:
        sys.path.insert(0, args.circuit_tracer)
        from circuit_tracer.graph import compute_graph_scores

        theirs = SimpleNamespace(
            logit_targets=[0], input_tokens=torch.zeros(graph.n_pos),
            selected_features=torch.zeros(graph.n_features),
            cfg=SimpleNamespace(n_layers=graph.n_layers),
            adjacency_matrix=torch.tensor(graph.adjacency, dtype=torch.float32),
            logit_probabilities=torch.ones(1),
        )  # fmt: skip
        replacement, completeness = compute_graph_scores(theirs)
        print(f"circuit-tracer:  replacement {replacement:.4f}  completeness {completeness:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["step", "scores"], default="step")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--transcoders", default=None)
    parser.add_argument("--circuit-tracer", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-features", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (part_step if args.part == "step" else part_scores)(args)


if __name__ == "__main__":
    main()
