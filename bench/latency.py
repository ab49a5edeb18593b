"""Per-crop inference latency of the CAE: Keras vs TFLite float32 / float16 / int8, 1 and 2 threads.

Why an efficiency number and not just milliseconds: milliseconds alone cannot say whether a runtime is slow
because the model is big or because it runs it badly. Efficiency = the model's achieved MAC/s divided by the
same runtime's MAC/s on one large 3x3 convolution alone (converted the same way; for int8 the faster of its
uint8 and float I/O conversions, since requantizing a large tensor is not convolution work), i.e. how close the whole
network gets to what that runtime can do on its best-case layer. Latency does not depend on the weights, so an
untrained model of the default config is used and no training run is needed.

Also: the peak RSS of a scorer-only process (no TensorFlow: sys.modules["tensorflow"] = None) that loads the int8
bundle and scores 50 crops. tflite-runtime is measured only when it imports (its wheels need numpy<2, so not in
this venv). The peak RSS is the probe's VmHWM: Linux carries ru_maxrss over fork + exec from the (TensorFlow-sized)
parent, so ru_maxrss alone would report the bench's own size; both are stored. Keras runs in a subprocess per
thread count because TensorFlow's thread pools are fixed at start-up.

    .venv/bin/python bench/latency.py [--config seed] [--size 128] [--runs 50] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

log = logging.getLogger("bench.latency")

THREADS = (1, 2)
CONV = (64, 64, 64)  # the reference layer: 3x3 conv, 64 -> 64 channels on a 64 x 64 map (151 M MACs)


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def _build(config: str, size: int):
    import keras

    from train.model import build_cae, get_config

    keras.utils.set_random_seed(0)
    return build_cae(get_config(config, input_size=size))


def _conv_model():
    import keras

    h, w, c = CONV
    inp = keras.Input((h, w, c))
    return keras.Model(inp, keras.layers.Conv2D(c, 3, padding="same")(inp)), h * w * 9 * c * c


def _images(shape: tuple[int, ...], n: int) -> np.ndarray:
    """Smooth random images in [0, 1] (calibration data for an untrained model; latency ignores the values)."""
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = rng.random(shape, np.float32)
        out.append(np.clip(cv2.GaussianBlur(img, (0, 0), 3) * 4 - 1.5, 0, 1).reshape(shape))
    return np.stack(out)


def keras_worker(config: str, size: int, threads: int, runs: int, warmup: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = _build(config, size)
    x = _images((size, size, 3), 1)
    fn = tf.function(lambda t: model(t, training=False))
    xt = tf.constant(x)
    return {
        "keras_predict": median_ms(lambda: model.predict(x, verbose=0), runs, warmup),
        "keras_tf_function": median_ms(lambda: fn(xt).numpy(), runs, warmup),
    }


def tflite_ms(interp_cls, path: Path, threads: int, runs: int, warmup: int) -> float:
    it = interp_cls(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    x = np.zeros(i["shape"], i["dtype"])

    def run():
        it.set_tensor(i["index"], x)
        it.invoke()
        it.get_tensor(o["index"])

    return median_ms(run, runs, warmup)


def _scorer_rss(bundle: Path, crops: int) -> dict:
    code = textwrap.dedent(
        f"""
        import sys, json, resource
        sys.modules["tensorflow"] = None
        import numpy as np
        from edge.scorer import Scorer
        s = Scorer({str(bundle)!r}, threads=2)
        rng = np.random.default_rng(0)
        ms = [s.score(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).inference_ms for _ in range({crops})]
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
        print(json.dumps({{"peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else None,
                          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "crops": {crops}, "median_inference_ms": float(np.median(ms))}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scorer RSS probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _temp_bundle(folder: Path, flat: bytes, size: int) -> Path:
    """A minimal valid bundle around the int8 model (untrained: the threshold is a placeholder)."""
    from edge.bundle import sha256_file, write_bundle_json
    from edge.interpreter import load_interpreter
    from edge.preprocess import InputSpec

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(flat)
    it = load_interpreter(folder / "model.tflite", 1)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    write_bundle_json(
        folder,
        {
            "name": "bench-untrained",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input": {
                **InputSpec(size, size).to_json(),
                "dtype": "uint8",
                "quantization": dict(zip(("scale", "zero_point"), i["quantization"], strict=True)),
            },
            "output": {
                "dtype": "uint8",
                "quantization": dict(zip(("scale", "zero_point"), o["quantization"], strict=True)),
            },
            "quantization": {"type": "int8"},
            "score": {"method": "local", "params": {}},
            "threshold": 1.0,
            "sha256": sha256_file(folder / "model.tflite"),
        },
    )
    return folder


def run(config: str, size: int, runs: int, warmup: int) -> dict:
    from convert.tflite import ConvertOptions, convert_model, representative_images
    from edge.interpreter import interpreter_class
    from train.model import count_macs

    model = _build(config, size)
    macs = count_macs(model)
    conv, conv_macs = _conv_model()
    rep = representative_images(_images((size, size, 3), 32), 32)
    conv_rep = _images(CONV, 8)
    variants = {
        "float32": ConvertOptions(quant="float32"),
        "float16": ConvertOptions(quant="float16"),
        "int8": ConvertOptions(quant="int8", representative=32, augment=False),
        "int8_float_io": ConvertOptions(quant="int8", io="float32", representative=32, augment=False),
    }
    litert, _ = interpreter_class()
    runtimes = {"litert": litert}
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteRuntime

        runtimes["tflite_runtime"] = TfliteRuntime
    except ImportError:
        log.info("tflite-runtime not installed (its wheels need numpy<2): not measured")
    result: dict = {
        "config": config,
        "input_size": size,
        "model_macs": macs,
        "reference_conv": {"shape": list(CONV), "kernel": 3, "macs": conv_macs},
        "runs": runs,
        "warmup": warmup,
        "statistic": "median ms per crop (batch 1)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "tflite_runtime": "measured" if "tflite_runtime" in runtimes else "not installed (needs numpy<2)",
        "threads": {},
    }
    with tempfile.TemporaryDirectory(prefix="dishwatch-bench-") as tmp:
        files, conv_files = {}, {}
        for name, opts in variants.items():
            files[name] = Path(tmp) / f"{name}.tflite"
            files[name].write_bytes(flat := convert_model(model, opts, rep))
            if name == "int8":
                bundle = _temp_bundle(Path(tmp) / "bundle", flat, size)
            conv_files[name] = Path(tmp) / f"conv_{name}.tflite"
            conv_files[name].write_bytes(convert_model(conv, opts, conv_rep))
        result["model_kb"] = {k: round(p.stat().st_size / 1024, 1) for k, p in files.items()}
        for threads in THREADS:
            row: dict = {}
            proc = subprocess.run(
                [sys.executable, __file__, "--keras-worker", str(threads), "--config", config, "--size", str(size),
                 "--runs", str(runs), "--warmup", str(warmup)],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"keras worker failed: {proc.stderr[-2000:]}")
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            for rt_name, cls in runtimes.items():
                prefix = "tflite" if rt_name == "litert" else rt_name
                conv_peak: dict[
                    str, float
                ] = {}  # per quant type: the faster I/O variant (I/O is not conv work)
                for name, opts in variants.items():
                    conv_ms = tflite_ms(cls, conv_files[name], threads, runs, warmup)
                    conv_peak[opts.quant] = max(conv_peak.get(opts.quant, 0.0), conv_macs / (conv_ms / 1e3))
                for name, opts in variants.items():
                    ms = tflite_ms(cls, files[name], threads, runs, warmup)
                    achieved, peak = macs / (ms / 1e3), conv_peak[opts.quant]
                    row[f"{prefix}_{name}"] = ms
                    row[f"{prefix}_{name}_gmac_s"] = round(achieved / 1e9, 2)
                    row[f"{prefix}_{name}_conv_gmac_s"] = round(peak / 1e9, 2)
                    row[f"{prefix}_{name}_efficiency"] = round(achieved / peak, 3)
            row["ratio_int8_float32"] = round(row["tflite_int8"] / row["tflite_float32"], 3)
            row["ratio_int8_keras"] = round(row["tflite_int8"] / row["keras_predict"], 4)
            row["ratio_int8_keras_tf_function"] = round(row["tflite_int8"] / row["keras_tf_function"], 4)
            result["threads"][str(threads)] = {
                k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
            }
        result["scorer_process"] = _scorer_rss(bundle, 50)
    return result


def table(r: dict) -> str:
    lines = [
        f"latency per crop, {r['config']} CAE at {r['input_size']} px ({r['model_macs'] / 1e9:.3f} GMAC), "
        f"median of {r['runs']} after {r['warmup']} warm-up",
        f"{'runtime':<24}" + "".join(f"{t + ' thr ms':>12}{'eff':>7}" for t in r["threads"]),
    ]
    names = ["keras_predict", "keras_tf_function"] + sorted(
        k for k in next(iter(r["threads"].values())) if k.startswith(("tflite_", "tflite_runtime_")) and k.count("_") <= 3
        and not k.endswith(("gmac_s", "efficiency"))
    )  # fmt: skip
    for n in names:
        cells = ""
        for row in r["threads"].values():
            eff = row.get(f"{n}_efficiency")
            cells += f"{row[n]:>12.2f}{'' if eff is None else f'{eff:.2f}':>7}"
        lines.append(f"{n:<24}{cells}")
    for t, row in r["threads"].items():
        lines.append(
            f"{t} thread(s): int8/float32 {row['ratio_int8_float32']:.2f}, int8/keras predict {row['ratio_int8_keras']:.3f}"
        )
    s = r["scorer_process"]
    lines.append(
        f"scorer-only process (int8, no TensorFlow): peak RSS {s['peak_rss_mb']:.0f} MB over {s['crops']} crops"
    )
    lines.append(f"tflite-runtime: {r['tflite_runtime']}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="CAE config (default: train.model.DEFAULT_CONFIG)")
    p.add_argument("--size", type=int, default=128, help="input size in px (default 128, the default input)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    p.add_argument("--keras-worker", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from train.model import DEFAULT_CONFIG

    config = a.config or DEFAULT_CONFIG
    if a.keras_worker:
        print(json.dumps(keras_worker(config, a.size, a.keras_worker, a.runs, a.warmup)))
        return 0
    result = run(config, a.size, max(a.runs, 1), a.warmup)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
