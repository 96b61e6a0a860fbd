"""Benchmark: parameters, training throughput and FLOPs of every registered model.

    python bench/models.py                        # tiny and reference sizes (< 5 min on 2 CPU cores)
    TFPIPE_BENCH_QUICK=1 python bench/models.py   # tiny sizes only (seconds; used by the tests)

For each model, at the reference size (``ModelConfig()`` defaults: squeezeformer 12 x 384) and at
``ModelConfig.tiny()``, on the Kaggle schema with ``C = 75`` input channels per level (a placeholder
for 3 representations x 25 input variables; the data pipeline fixes the real count):

* ``params``: all weights (trainable and BatchNorm statistics);
* ``samples_per_s``: forward + backward + AdamW update, one XLA-compiled step (``jit_compile=True``),
  timed after compilation and one warm-up step;
* ``flops_per_sample``: FLOPs of that training step per sample, counted from the step's HLO: 2 x
  multiply-adds of every ``dot`` and ``convolution`` (element-wise work not counted), with while loops
  (the LSTM recurrences) multiplied by their trip count.

The last stdout line is JSON: ``{"models": {NAME: {"params", "samples_per_s", "flops_per_sample"}}}``
with NAME the model name for the reference size and ``NAME_tiny`` for the tiny size.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpipe.losses import LossConfig, total_loss  # noqa: E402
from tfpipe.models import MODELS, ModelConfig, build_model  # noqa: E402
from tfpipe.schema import AUX_TARGETS, KAGGLE, NLEV  # noqa: E402

CHANNELS = 75
"""Placeholder input channels per level: 3 representations x 25 Kaggle input variables."""

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
SIZES = {"tiny": (16, 3)} if QUICK else {"tiny": (16, 5), "reference": (8, 2)}
"""size -> (batch, timed steps)."""


def _shape_dims(text: str) -> list[int]:
    """Dimensions of the first array type in ``text`` (``f32[4,60,16]{2,1,0}`` -> [4, 60, 16])."""
    match = re.search(r"\w+\[([\d,]*)\]", text)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def _split_computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    entry, name = "", None
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
        if head:
            name = head.group(2)
            comps[name] = []
            entry = name if head.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps, entry


def _instruction_flops(line: str) -> float:
    """FLOPs of one ``dot`` or ``convolution`` instruction (0 for anything else)."""
    match = re.match(r"\s*(ROOT )?%[\w.\-]+ = (\S+) (dot|convolution)\((.*)", line)
    if not match:
        return 0.0
    out = math.prod(_shape_dims(match.group(2)))
    args = match.group(4)
    if match.group(3) == "dot":
        lhs = _shape_dims(args)
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
        contracted = math.prod(lhs[int(d)] for d in dims.split(",") if d)
        return 2.0 * out * contracted
    kernel = _shape_dims(args[args.index(",") + 1 :])
    labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
    return 2.0 * out * math.prod(kernel) / max(kernel[labels.index("o")], 1)


def hlo_flops(hlo: str) -> float:
    """FLOPs of ``dot``/``convolution`` ops in an HLO module, following calls, fusions and loops.

    A while loop counts its body times the trip count, read as the s32 constant that its condition
    compares against (TF while loops: ``counter < N``).
    """
    comps, entry = _split_computations(hlo)
    memo: dict[str, float] = {}

    def trip_count(cond: str) -> int:
        seen, stack, consts = set(), [cond], []
        while stack:
            name = stack.pop()
            if name in seen or name not in comps:
                continue
            seen.add(name)
            for line in comps[name]:
                consts += [int(c) for c in re.findall(r"s32\[\] constant\((\d+)\)", line)]
                stack += re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line)
        return max(consts) if consts else NLEV

    def total(name: str) -> float:
        if name not in memo:
            memo[name] = 0.0
            flops = 0.0
            for line in comps.get(name, []):
                flops += _instruction_flops(line)
                loop = re.search(r"condition=%([\w.\-]+), body=%([\w.\-]+)", line)
                if loop:
                    flops += trip_count(loop.group(1)) * total(loop.group(2))
                    continue
                for callee in re.findall(r"calls=%([\w.\-]+)", line):
                    flops += total(callee)
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                if branches:
                    flops += max(total(b.strip().lstrip("%")) for b in branches.group(1).split(","))
            memo[name] = flops
        return memo[name]

    return total(entry)


def train_step(model: keras.Model, loss_config: LossConfig):
    """A jit-compiled training step: forward, losses, backward, AdamW update."""
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=4e-4)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def step(x, y, aux_true):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss, _ = total_loss(out, y, tf.ones([y.shape[1]]), aux_true, None, loss_config)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


def measure(config: ModelConfig, batch: int, steps: int) -> dict:
    """Parameters, samples/s and FLOPs per sample of one model and size."""
    keras.utils.set_random_seed(0)
    model = build_model(config, CHANNELS, KAGGLE)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, NLEV, CHANNELS)), tf.float32)
    y = tf.constant(rng.normal(size=(batch, KAGGLE.n_targets)), tf.float32)
    aux = tf.constant(rng.uniform(-1, 1, size=(batch, len(AUX_TARGETS))), tf.float32)
    step = train_step(model, LossConfig(n_profiles=len(KAGGLE.target_profiles)))
    t0 = time.perf_counter()
    step(x, y, aux).numpy()  # compile
    compile_s = time.perf_counter() - t0
    step(x, y, aux).numpy()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y, aux)
    loss.numpy()
    elapsed = time.perf_counter() - t0
    flops = hlo_flops(step.experimental_get_compiler_ir(x, y, aux)(stage="hlo")) / batch
    result = {
        "params": int(model.count_params()),
        "samples_per_s": round(batch * steps / elapsed, 2),
        "flops_per_sample": float(f"{flops:.4g}"),
    }
    print(
        f"{config.name:14s} batch {batch:3d}: {result['params']:>11,d} params, compile {compile_s:5.1f} s, "
        f"{result['samples_per_s']:9.2f} samples/s, {flops / 1e9:8.3f} GFLOP/sample (train step)",
        file=sys.stderr,
    )
    return result


def main() -> None:
    report: dict[str, dict] = {}
    for size, (batch, steps) in SIZES.items():
        for name in sorted(MODELS):
            config = ModelConfig.tiny(name) if size == "tiny" else ModelConfig(name=name)
            key = f"{name}_tiny" if size == "tiny" else name
            report[key] = measure(config, batch, steps)
            keras.backend.clear_session()
    print(json.dumps({"models": report}))


if __name__ == "__main__":
    main()
