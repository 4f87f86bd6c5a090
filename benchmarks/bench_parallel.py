"""Issue 13's proof: per-rank peaks of the analytic estimator (planner/analytic/parallel.py, no torch)
against torch.distributed's own DDP and FSDP2 traced under a fake process group (rank 0 of N), on
14 configurations: both built-in kinds from their YAML setups (measured:
``planner.measure.builtin_trace.run_step``, which traces their packaged step files) and those step
files named directly (``examples/steps/ldm_stage1.py``, ``ldm_stage2.py``; measured:
``planner.measure.stepfile.run``); DDP, FSDP (ZeRO-3) and FSDP
grad-op; 2, 4 and 8 ranks; fp32, AMP fp16 and bf16; accumulation 1 and 2.

    python benchmarks/bench_parallel.py [--json] [--random N [--seed S]]

``--random N``: N random built-in configurations instead (2, 3, 4 or 8 ranks; the three
strategies; fp32 / AMP fp16 / bf16; accumulation 1-3; Adam, AdamW, SGD; checkpointing, flash
attention, the perceptual loss (squeeze / alex), no discriminator, narrower channels, micro-batch
1-3), each measured by the built-in step. Prints one row per configuration (analytic bytes, measured bytes, difference) and exits 1 when any
differs by more than TOLERANCE (0.5 %, issue 13's bound). The sizes are small so the 14 traces
take about a minute on two cores; the transcription does not depend on size (the tests check the
same terms to the byte on other sizes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOLERANCE = 0.005

# stage 1: AutoencoderKL (channels 32,64,64) + PatchDiscriminator (+ the 2.5D perceptual loss)
VOX = (48, 48, 32)
VOX_P = (64, 64, 32)  # the perceptual loss's squeeze trunk needs every side >= 64
# stage 2: a small DiffusionModelUNet on the 3 x 8x8x8 latent of a 32^3 volume
UNET = {"num_channels": [8, 8, 16], "attention_levels": [False, False, True], "num_head_channels": [0, 0, 16],
        "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}
UNET_KNOBS = (("latent", (8, 8, 8)), ("channels", (8, 8, 16)), ("num_head_channels", (0, 0, 16)),
              ("num_res_blocks", (1, 1, 1)), ("norm_num_groups", 8))
UNET_BATCH = 2

# (engine, kind, gpus, strategy, precision, accumulation, perceptual)
CONFIGS = [
    ("built-in", "ldm-stage1", 2, "ddp", "fp32", 1, False),
    ("built-in", "ldm-stage1", 4, "fsdp", "amp-fp16", 1, True),
    ("built-in", "ldm-stage1", 8, "fsdp-grad-op", "fp32", 2, False),
    ("built-in", "ldm-stage1", 8, "ddp", "amp-bf16", 1, True),
    ("built-in", "ldm-stage2", 2, "ddp", "amp-fp16", 1, False),
    ("built-in", "ldm-stage2", 2, "fsdp", "fp32", 1, False),
    ("built-in", "ldm-stage2", 4, "fsdp", "amp-fp16", 2, False),
    ("built-in", "ldm-stage2", 8, "fsdp-grad-op", "amp-bf16", 1, False),
    ("built-in", "ldm-stage2", 4, "ddp", "fp32", 2, False),
    ("step file", "ldm-stage1", 4, "ddp", "amp-fp16", 1, False),
    ("step file", "ldm-stage1", 8, "fsdp", "fp32", 1, False),
    ("step file", "ldm-stage1", 2, "fsdp-grad-op", "amp-bf16", 1, True),
    ("step file", "ldm-stage2", 2, "fsdp-grad-op", "amp-fp16", 1, False),
    ("step file", "ldm-stage2", 8, "ddp", "fp32", 1, False),
]

AMP = {"fp32": (False, "float16"), "amp-fp16": (True, "float16"), "amp-bf16": (True, "bfloat16")}


def training_setup(kind: str, gpus: int, strategy: str, precision: str, accum: int, perceptual: bool):
    from planner.config import setup_from_dict

    amp, dtype = AMP[precision]
    data: dict = {"kind": kind, "device": {"mixed_precision": amp, "amp_dtype": dtype},
                  "parallel": {"gpus": gpus, "strategy": strategy}}
    if kind == "ldm-stage1":
        data["data"] = {"voxel_size": list(VOX_P if perceptual else VOX)}
        data["autoencoder"] = {"training": {"use_perceptual_loss": perceptual, "gradient_accumulation_steps": accum}}
    else:
        data["data"] = {"voxel_size": [32, 32, 32]}
        data["diffusion"] = dict(UNET, training={"batch_size": UNET_BATCH, "gradient_accumulation_steps": accum})
    return setup_from_dict(data)


def measured(engine: str, kind: str, gpus: int, strategy: str, precision: str, accum: int, perceptual: bool) -> int:
    if engine == "built-in":
        from planner.measure.builtin_trace import run_step

        rec = run_step(training_setup(kind, gpus, strategy, precision, accum, perceptual), "fake", keep_timeline=False)
        return rec.tracker.peak_bytes
    from planner.measure.stepfile import run
    from planner.step_setup import StepSetup

    if kind == "ldm-stage1":
        path = ROOT / "examples" / "steps" / "ldm_stage1.py"
        knobs: tuple = (("voxel", VOX_P if perceptual else VOX), ("perceptual", perceptual))
        batch = 1
    else:
        path, knobs, batch = ROOT / "examples" / "steps" / "ldm_stage2.py", UNET_KNOBS, UNET_BATCH
    rec = run(StepSetup(str(path), knobs=knobs, batch_size=batch, precision=precision, accumulation=accum,
                        gpus=gpus, strategy=strategy), keep_timeline=False)
    return rec.tracker.peak_bytes


def analytic(kind: str, gpus: int, strategy: str, precision: str, accum: int, perceptual: bool) -> int:
    from planner.analytic.estimate import estimate

    return estimate(training_setup(kind, gpus, strategy, precision, accum, perceptual)).peak_allocated_bytes


def random_setups(n: int, seed: int) -> list[dict]:
    """``n`` random built-in configurations (as config mappings), small enough to trace in seconds."""
    import random

    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.choice(["ldm-stage1", "ldm-stage2"])
        acc, opt = rng.choice([1, 1, 2, 3]), rng.choice(["adam", "adamw", "sgd"])
        d: dict = {"kind": kind, "device": {"mixed_precision": rng.random() < 0.5,
                                            "amp_dtype": rng.choice(["float16", "bfloat16"])},
                   "parallel": {"gpus": rng.choice([2, 3, 4, 8]), "strategy": rng.choice(["ddp", "fsdp", "fsdp-grad-op"])}}
        if kind == "ldm-stage1":
            perc = rng.random() < 0.3
            tr: dict = {"use_perceptual_loss": perc, "gradient_accumulation_steps": acc, "optimizer": opt,
                        "use_gradient_checkpointing": rng.random() < 0.3,
                        "discriminator": {"enabled": rng.random() < 0.8}}
            if perc:
                tr["perceptual"] = {"network_type": rng.choice(["squeeze", "alex"])}
            narrow = rng.random() < 0.3
            d["data"] = {"voxel_size": list(VOX_P) if perc else rng.choice([list(VOX), [32, 48, 32]])}
            d["autoencoder"] = {"training": tr, "use_flash_attention": rng.random() < 0.3,
                                "num_channels": [16, 32, 32] if narrow else [32, 64, 64]}
            if narrow:
                d["autoencoder"]["norm_num_groups"] = 8
        else:
            d["data"] = {"voxel_size": [32, 32, 32]}
            d["diffusion"] = dict(UNET, use_flash_attention=rng.random() < 0.3,
                                  training={"batch_size": rng.choice([1, 2, 3]), "gradient_accumulation_steps": acc,
                                            "optimizer": opt})
        out.append(d)
    return out


def _row(label: dict, a: int, m: int) -> dict:
    return {**label, "analytic_bytes": a, "measured_bytes": m, "difference_bytes": a - m, "relative": (a - m) / m}


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    rows = []
    t0 = time.perf_counter()
    if "--random" in argv:
        from planner.analytic.estimate import estimate
        from planner.config import setup_from_dict
        from planner.measure.builtin_trace import run_step

        n = int(argv[argv.index("--random") + 1])
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 1
        for i, d in enumerate(random_setups(n, seed), 1):
            s = setup_from_dict(d)
            a, m = estimate(s).peak_allocated_bytes, run_step(s, "fake", keep_timeline=False).tracker.peak_bytes
            rows.append(_row({"setup": d}, a, m))
            if not as_json:
                print(f"[{i}/{n}] diff {a - m:+,} B ({100 * rows[-1]['relative']:+.4f} %): {json.dumps(d)}", flush=True)
    for i, cfg in enumerate(CONFIGS if "--random" not in argv else [], 1):
        engine, kind, gpus, strategy, precision, accum, perceptual = cfg
        a = analytic(kind, gpus, strategy, precision, accum, perceptual)
        m = measured(*cfg)
        rows.append(_row({"measured_by": engine, "kind": kind, "gpus": gpus, "strategy": strategy,
                          "precision": precision, "accumulation": accum, "perceptual": perceptual}, a, m))
        if not as_json:
            print(f"[{i}/{len(CONFIGS)}] {engine:9} {kind} {gpus} x {strategy:12} {precision:8} accum {accum}"
                  f"{' +perceptual' if perceptual else ''}: analytic {a:,} measured {m:,} "
                  f"diff {a - m:+,} B ({100 * rows[-1]['relative']:+.4f} %)", flush=True)
    worst = max(abs(r["relative"]) for r in rows)
    exact = sum(r["difference_bytes"] == 0 for r in rows)
    summary = {"configurations": len(rows), "exact": exact, "worst_relative": worst, "tolerance": TOLERANCE,
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"per-rank peak, analytic vs traced: {exact}/{len(rows)} exact, worst {100 * worst:.4f} % "
              f"(bound {100 * TOLERANCE:.1f} %), {summary['seconds']} s")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
