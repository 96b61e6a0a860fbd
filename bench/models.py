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

* ``infer_samples_per_s``: forward pass alone (inference), same batch, XLA-compiled;
* ``mfu``: ``flops_per_sample * samples_per_s`` over the peak given in ``TFPIPE_BENCH_PEAK_TFLOPS``
  (absent when no peak is given).

The model and loss code is backend-agnostic Keras 3, so the same benchmark runs on any Keras backend:
TensorFlow (``tf.function(jit_compile=True)``, the default) or JAX (``jax.jit``, for a GPU machine
without TensorFlow)::

    KERAS_BACKEND=jax TFPIPE_BENCH_PRECISION=mixed_bfloat16 TFPIPE_BENCH_BATCH=1024x20 \
        TFPIPE_BENCH_PEAK_TFLOPS=989 TFPIPE_BENCH_SIZES=reference python bench/models.py

Environment: ``TFPIPE_BENCH_PRECISION`` (a Keras dtype policy, default ``float32``),
``TFPIPE_BENCH_BATCH`` (``BATCHxSTEPS`` for the reference size), ``TFPIPE_BENCH_SIZES``
(``tiny``, ``reference`` or both, comma-separated), ``TFPIPE_BENCH_MODELS`` (comma-separated names).

The last stdout line is JSON: ``{"models": {NAME: {"params", "samples_per_s", "flops_per_sample",
"infer_samples_per_s"[, "mfu"]}}, "backend", "device", "precision"}`` with NAME the model name for the
reference size and ``NAME_tiny`` for the tiny size.
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

from tfpipe.data.schema import AUX_TARGETS, KAGGLE, NLEV  # noqa: E402
from tfpipe.losses import LossConfig, total_loss  # noqa: E402
from tfpipe.models import MODELS, ModelConfig, build_model  # noqa: E402

CHANNELS = 75
"""Placeholder input channels per level: 3 representations x 25 Kaggle input variables."""

QUICK = os.environ.get("TFPIPE_BENCH_QUICK", "") not in ("", "0")
PRECISION = os.environ.get("TFPIPE_BENCH_PRECISION", "float32")
PEAK_TFLOPS = float(os.environ.get("TFPIPE_BENCH_PEAK_TFLOPS", "0") or 0)


def _sizes() -> dict[str, tuple[int, int]]:
    """size -> (batch, timed steps), from the defaults and the environment."""
    sizes = {"tiny": (16, 3)} if QUICK else {"tiny": (16, 5), "reference": (8, 2)}
    if os.environ.get("TFPIPE_BENCH_BATCH"):
        batch, steps = os.environ["TFPIPE_BENCH_BATCH"].lower().split("x")
        sizes["reference"] = (int(batch), int(steps))
    wanted = os.environ.get("TFPIPE_BENCH_SIZES")
    if wanted:
        sizes = {k: v for k, v in sizes.items() if k in wanted.split(",")}
    return sizes


def _shape_dims(text: str) -> list[int]:
    """Dimensions of the first array type in ``text`` (``f32[4,60,16]{2,1,0}`` -> [4, 60, 16])."""
    match = re.search(r"\w+\[([\d,]*)\]", text)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def _split_computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    comps: dict[str, list[str]] = {}
    entry, name = "", None
    for line in hlo.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) ", line)
        if head:
            name = head.group(2)
            comps[name] = []
            entry = name if head.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps, entry


_DEFINITION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ")
_OPERAND = re.compile(r"(?:(\w+\[[\d,]*\])(?:\{[^}]*\})?\s+)?%?([A-Za-z_][\w.\-]*)")


def _operand_dims(args: str, shapes: dict[str, list[int]]) -> list[list[int]]:
    """Dimensions of each operand in ``a, b), attrs``: written inline (TensorFlow's HLO) or looked
    up by name among the computation's definitions (JAX's HLO)."""
    return [
        _shape_dims(m.group(1)) if m.group(1) else shapes.get(m.group(2), [])
        for m in _OPERAND.finditer(args.split(")", 1)[0])
    ]


def _instruction_flops(line: str, shapes: dict[str, list[int]]) -> float:
    """FLOPs of one ``dot`` or ``convolution`` instruction (0 for anything else)."""
    match = re.match(r"\s*(ROOT )?%?[\w.\-]+ = (\S+) (dot|convolution)\((.*)", line)
    if not match:
        return 0.0
    out = math.prod(_shape_dims(match.group(2)))
    operands = _operand_dims(match.group(4), shapes)
    if match.group(3) == "dot":
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1)
        contracted = math.prod(operands[0][int(d)] for d in dims.split(",") if d)
        return 2.0 * out * contracted
    kernel = operands[1]
    labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
    return 2.0 * out * math.prod(kernel) / max(kernel[labels.index("o")], 1)


def hlo_flops(hlo: str) -> float:
    """FLOPs of ``dot``/``convolution`` ops in an HLO module, following calls, fusions and loops.

    Reads TensorFlow's and JAX's HLO text (instruction names with or without ``%``).

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
                stack += re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)
        return max(consts) if consts else NLEV

    def total(name: str) -> float:
        if name not in memo:
            memo[name] = 0.0
            flops = 0.0
            lines = comps.get(name, [])
            shapes = {m.group(1): _shape_dims(m.group(2)) for m in map(_DEFINITION.match, lines) if m}
            for line in lines:
                flops += _instruction_flops(line, shapes)
                loop = re.search(r"condition=%?([\w.\-]+), body=%?([\w.\-]+)", line)
                if loop:
                    flops += trip_count(loop.group(1)) * total(loop.group(2))
                    continue
                for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line):
                    flops += total(callee)
                branches = re.search(r"branch_computations=\{([^}]*)\}", line)
                if branches:
                    flops += max(total(b.strip().lstrip("%")) for b in branches.group(1).split(","))
            memo[name] = flops
        return memo[name]

    return total(entry)


class Step:
    """One model's XLA-compiled training step (forward, losses, backward, AdamW) and forward pass.

    ``train(x, y, aux)`` runs one step and returns the loss; ``infer(x)`` the predictions;
    ``hlo(x, y, aux)`` the training step's HLO before optimisation (for the FLOP count).
    """

    def __init__(self, model: keras.Model, loss_config: LossConfig) -> None:
        self.model, self.loss_config = model, loss_config
        self.optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=4e-4)
        self.optimizer.build(model.trainable_variables)
        if keras.backend.backend() == "jax":
            self._build_jax()
        else:
            self._build_tf()

    def _loss(self, out, y, aux):
        mask = keras.ops.ones([y.shape[1]])
        return total_loss(out, y, mask, aux, None, self.loss_config)[0]

    def _build_tf(self) -> None:
        import tensorflow as tf

        model, optimizer = self.model, self.optimizer

        @tf.function(jit_compile=True)
        def train(x, y, aux):
            with tf.GradientTape() as tape:
                loss = self._loss(model(x, training=True), y, aux)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        self.train = train
        self.infer = tf.function(lambda x: model(x, training=False)["pred"], jit_compile=True)
        self.hlo = lambda x, y, aux: train.experimental_get_compiler_ir(x, y, aux)(stage="hlo")

    def _build_jax(self) -> None:
        import jax

        model, optimizer = self.model, self.optimizer

        def loss_and_state(tv, ntv, x, y, aux):
            out, ntv = model.stateless_call(tv, ntv, x, training=True)
            return self._loss(out, y, aux), ntv

        grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

        def step(state, x, y, aux):
            tv, ntv, ov = state
            (loss, ntv), grads = grad_fn(tv, ntv, x, y, aux)
            tv, ov = optimizer.stateless_apply(ov, grads, tv)
            return loss, (tv, ntv, ov)

        jitted = jax.jit(step, donate_argnums=0)
        forward = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0]["pred"])
        self.state = tuple(
            [v.value for v in vs]
            for vs in (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        )

        def train(x, y, aux):
            loss, self.state = jitted(self.state, x, y, aux)
            return loss

        self.train = train
        self.infer = lambda x: forward(self.state[0], self.state[1], x)
        self.hlo = lambda x, y, aux: jitted.lower(self.state, x, y, aux).as_text(dialect="hlo")


def _timed(fn, steps: int) -> tuple[float, float]:
    """(compile + first call seconds, seconds per call over ``steps`` calls after one warm-up)."""
    t0 = time.perf_counter()
    np.asarray(fn())
    first = time.perf_counter() - t0
    np.asarray(fn())
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    np.asarray(out)
    return first, (time.perf_counter() - t0) / steps


def measure(config: ModelConfig, batch: int, steps: int) -> dict:
    """Parameters, samples/s (train and inference) and FLOPs per sample of one model and size."""
    keras.utils.set_random_seed(0)
    model = build_model(config, CHANNELS, KAGGLE)
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.normal(size=(batch, NLEV, CHANNELS)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.normal(size=(batch, KAGGLE.n_targets)).astype("float32"))
    aux = keras.ops.convert_to_tensor(rng.uniform(-1, 1, size=(batch, len(AUX_TARGETS))).astype("float32"))
    step = Step(model, LossConfig(n_profiles=len(KAGGLE.target_profiles)))
    flops = hlo_flops(step.hlo(x, y, aux)) / batch
    compile_s, train_s = _timed(lambda: step.train(x, y, aux), steps)
    _, infer_s = _timed(lambda: step.infer(x), steps)
    result = {
        "params": int(model.count_params()),
        "samples_per_s": round(batch / train_s, 2),
        "flops_per_sample": float(f"{flops:.4g}"),
        "infer_samples_per_s": round(batch / infer_s, 2),
    }
    if PEAK_TFLOPS > 0:
        result["mfu"] = round(flops * result["samples_per_s"] / (PEAK_TFLOPS * 1e12), 4)
    print(
        f"{config.name:14s} batch {batch:4d}: {result['params']:>11,d} params, compile {compile_s:5.1f} s, "
        f"train {result['samples_per_s']:10.2f} samples/s, infer {result['infer_samples_per_s']:10.2f} "
        f"samples/s, {flops / 1e9:8.3f} GFLOP/sample (train step)"
        + (f", MFU {result['mfu']:.1%}" if "mfu" in result else ""),
        file=sys.stderr,
    )
    return result


def _device() -> str:
    """The accelerator the backend computes on, in words."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"


def main() -> None:
    keras.mixed_precision.set_dtype_policy(PRECISION)
    names = os.environ.get("TFPIPE_BENCH_MODELS", ",".join(sorted(MODELS))).split(",")
    print(f"backend {keras.backend.backend()}, device {_device()}, precision {PRECISION}", file=sys.stderr)
    report: dict[str, dict] = {}
    for size, (batch, steps) in _sizes().items():
        for name in names:
            config = ModelConfig.tiny(name) if size == "tiny" else ModelConfig(name=name)
            key = f"{name}_tiny" if size == "tiny" else name
            report[key] = measure(config, batch, steps)
            keras.backend.clear_session()
    summary = {"backend": keras.backend.backend(), "device": _device(), "precision": PRECISION}
    print(json.dumps({"models": report, **summary}))


if __name__ == "__main__":
    main()
