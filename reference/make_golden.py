#!/usr/bin/env python3
"""Golden values from real PyTorch for the A/B/C problem.

Run with the project's torch venv (`make golden`); writes reference/abc-golden.json,
which the default `cargo test` compares the engine and candle against, so agreement with
PyTorch is checked even on a machine without libtorch.

The seeded inits use SplitMix64, exactly as `src/models/rng.rs` does: every entry of x,
then A, B, C row by row, uniform in [-1, 1) from 53 random bits.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = (1 << 64) - 1
LR = 0.01
STEPS = 30


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self, lo, hi):
        return lo + (hi - lo) * ((self.next_u64() >> 11) * (1.0 / (1 << 53)))


def ones_init(k):
    m = [[1.0] * k for _ in range(k)]
    return {"x": [1.0] * k, "A": m, "B": [r[:] for r in m], "C": [r[:] for r in m]}


def seeded_init(k, seed):
    rng = SplitMix64(seed)
    vec = lambda: [rng.uniform(-1.0, 1.0) for _ in range(k)]
    x = vec()
    mat = lambda: [vec() for _ in range(k)]
    a, b, c = mat(), mat(), mat()
    return {"x": x, "A": a, "B": b, "C": c}


def train(init, dtype, lr=LR, steps=STEPS):
    """The seed's PyTorch run: loss recorded before each `P -= lr * P.grad`."""
    x = torch.tensor(init["x"], dtype=torch.float64).to(dtype)
    params = {n: torch.tensor(init[n], dtype=torch.float64).to(dtype).requires_grad_(True) for n in "ABC"}
    losses, grads = [], []
    for _ in range(steps):
        a, b, c = params["A"], params["B"], params["C"]
        loss = ((torch.sigmoid(x @ a) + x @ b) @ c).square().sum()
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.double().tolist() for n, p in params.items()})
        with torch.no_grad():
            for p in params.values():
                p -= lr * p.grad
                p.grad.zero_()
    final = {n: p.detach().double().tolist() for n, p in params.items()}
    return losses, grads, final


def case(name, source, init, dtype):
    torch_dtype = {"f32": torch.float32, "f64": torch.float64}[dtype]
    loss, grads, final = train(init, torch_dtype)
    return {
        "name": f"{name}-{dtype}",
        "init_source": source,
        "dtype": dtype,
        "lr": LR,
        "steps": STEPS,
        "init": init,
        "loss": loss,
        "grads": grads,
        "final": final,
    }


def main():
    torch.set_num_threads(1)
    example_path = os.path.join(HERE, "abc-init-example.json")
    with open(example_path) as f:
        example = json.load(f)
    inits = [
        ("ones", "ones", ones_init(3)),
        ("seed1", "seed:1", seeded_init(3, 1)),
        ("seed2-k5", "seed:2", seeded_init(5, 2)),
        ("example-file", "reference/abc-init-example.json", example),
    ]
    cases = [case(n, s, i, d) for (n, s, i) in inits for d in ("f32", "f64")]
    out = {
        "generator": "reference/make_golden.py",
        "torch_version": torch.__version__,
        "problem": "y = x@A, u = sigmoid(y), v = x@B, z = u + v, w = z@C, loss = sum(w**2); P -= lr * P.grad",
        "rng_check": {"seed": 1234567, "splitmix64_first": [SplitMix64(1234567).next_u64()]},
        "cases": cases,
    }
    path = os.path.join(HERE, "abc-golden.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases, torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
