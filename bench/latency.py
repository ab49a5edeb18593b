"""Per-crop inference latency of the CAE and of the default method (`effnet-knn`): Keras vs TFLite float32 /
float16 / int8, 1 and 2 threads.

Why both models: the committed default bundle (models/default) is `effnet-knn`, an int8 EfficientNet-Lite2 cut
to a patch-feature grid followed by a numpy nearest-neighbour search over the bundle's bank, so the CAE's figures
alone no longer describe what the device runs. The effnet feature model is converted with the interface
convert/bundle_writer.py ships (int8, uint8 input, float32 dequantized output) and the shipped model.tflite is
timed next to it. Its end-to-end time is Scorer.score on the real bundle (backbone + kNN search + heat map),
timed around the call: ScoreResult.inference_ms covers the interpreter alone.

Why an efficiency number and not just milliseconds: milliseconds alone cannot say whether a runtime is slow
because the model is big or because it runs it badly. Efficiency = the model's achieved MAC/s divided by the
same runtime's MAC/s on one large 3x3 convolution alone (converted the same way; for int8 the faster of its
uint8 and float I/O conversions, since requantizing a large tensor is not convolution work), i.e. how close the whole
network gets to what that runtime can do on its best-case layer. Latency does not depend on the weights, so an
untrained CAE of the default config is used and no training run is needed (the effnet weights are the installed
pretrained ones).

Also: a scorer-only process (no TensorFlow: sys.modules["tensorflow"] = None) per thread count that loads the
int8 bundle (for the CAE a temporary one around the untrained model, for effnet models/default) and scores
300x300 crops: median model and end-to-end ms, peak RSS. numpy's BLAS gets one thread, as every `python -m
edge` command gives it (edge.cli.single_thread_blas says why), and OpenCV one thread, as edge.daemon sets it, so
"1 thread" is the whole process's compute. tflite-runtime is measured only when it imports (its wheels need
numpy<2, so not in this venv). The peak RSS is the probe's VmHWM: Linux carries ru_maxrss over fork + exec from
the (TensorFlow-sized) parent, so ru_maxrss alone would report the bench's own size; both are stored. Keras runs in a subprocess per
thread count because TensorFlow's thread pools are fixed at start-up.

    .venv/bin/python bench/latency.py [--model cae|effnet|both] [--config seed] [--size 128]
        [--bundle models/default] [--runs 50] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

    from convert.tflite import ConvertOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.machine import cpu_line, evict_from_page_cache, library_roots, machine_record  # noqa: E402
from edge.cli import BLAS_THREAD_ENV  # noqa: E402

log = logging.getLogger("bench.latency")

MODELS = ("cae", "effnet")
THREADS = (1, 2)
CONV = (64, 64, 64)  # the reference layer: 3x3 conv, 64 -> 64 channels on a 64 x 64 map (151 M MACs)
CONV_MACS = CONV[0] * CONV[1] * 9 * CONV[2] * CONV[2]
BLOCK = 5  # consecutive invokes of one model before the next takes its turn (tflite_ms)
REPRESENTATIVE = 32  # int8 calibration images: they set ranges, not the graph, so not the latency


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def build_model(model: str, config: str, size: int) -> keras.Model:
    """The Keras network a model kind converts: the untrained CAE of `config`, or the pretrained effnet
    patch-feature net of the backbone `config` names (train.features.BACKBONES)."""
    import keras

    keras.utils.set_random_seed(0)
    if model == "effnet":
        from train.features import effnet_feature_model

        return effnet_feature_model(size, config)
    from train.model import build_cae, get_config

    return build_cae(get_config(config, input_size=size))


def bundle_backbone(bundle_json: dict) -> str:
    """The backbone an effnet-knn bundle was made with (its run's args); bundles made before Lite2 are Lite0."""
    args = ((bundle_json.get("training") or {}).get("run") or {}).get("args") or {}
    return args.get("backbone") or "efficientnet-lite0"


def variants(model: str) -> dict[str, ConvertOptions]:
    """name -> ConvertOptions; int8 as convert/bundle_writer ships it (kNN feature models: float32 output)."""
    from convert.tflite import ConvertOptions

    int8 = ConvertOptions(
        quant="int8", representative=REPRESENTATIVE, augment=False, float_output=model == "effnet"
    )
    return {
        "float32": ConvertOptions(quant="float32"),
        "float16": ConvertOptions(quant="float16"),
        "int8": int8,
        "int8_float_io": replace(int8, io="float32"),
    }


def _conv_model() -> keras.Model:
    import keras

    h, w, c = CONV
    inp = keras.Input((h, w, c))
    return keras.Model(inp, keras.layers.Conv2D(c, 3, padding="same")(inp))


def _images(shape: tuple[int, ...], n: int) -> np.ndarray:
    """Smooth random images in [0, 1] (calibration data for an untrained model; latency ignores the values)."""
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = rng.random(shape, np.float32)
        out.append(np.clip(cv2.GaussianBlur(img, (0, 0), 3) * 4 - 1.5, 0, 1).reshape(shape))
    return np.stack(out)


def convert_all(
    model: keras.Model, opts: dict[str, ConvertOptions], n_rep: int, folder: Path, prefix: str
) -> dict[str, tuple[Path, str]]:
    """Convert `model` once per variant into folder: name -> (.tflite path, quant type)."""
    from convert.tflite import convert_model, representative_images

    rep = representative_images(_images(tuple(model.input_shape[1:]), n_rep), n_rep, augment=False)
    out = {}
    for name, o in opts.items():
        path = folder / f"{prefix}_{name}.tflite"
        path.write_bytes(convert_model(model, o, rep))
        out[name] = (path, o.quant)
    return out


def keras_worker(model: str, config: str, size: int, threads: int, runs: int, warmup: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    net = build_model(model, config, size)
    x = _images((size, size, 3), 1)
    fn = tf.function(lambda t: net(t, training=False))
    xt = tf.constant(x)
    return {
        "keras_predict": median_ms(lambda: net.predict(x, verbose=0), runs, warmup),
        "keras_tf_function": median_ms(lambda: fn(xt).numpy(), runs, warmup),
    }


def _keras_row(model: str, config: str, size: int, threads: int, runs: int, warmup: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--keras-worker", str(threads), "--model", model, "--config", config,
         "--size", str(size), "--runs", str(runs), "--warmup", str(warmup)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"keras worker ({model}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tflite_ms(interp_cls, paths: list[Path], threads: int, runs: int, warmup: int) -> list[float]:
    """Median ms per invoke of each model, taking turns in blocks of BLOCK invokes.

    Why turns: on a busy machine the load drifts over a minute; a model and the reference conv timed in
    turns see the same load, so their ratio (the efficiency) holds even when the milliseconds move.
    """

    def runner(path: Path):
        it = interp_cls(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        x = np.zeros(i["shape"], i["dtype"])

        def run():
            it.set_tensor(i["index"], x)
            it.invoke()
            it.get_tensor(o["index"])

        return run

    runners = [runner(p) for p in paths]
    times: list[list[float]] = [[] for _ in runners]
    for fn in runners:
        for _ in range(warmup):
            fn()
    while len(times[0]) < runs:
        for fn, ts in zip(runners, times, strict=True):
            for _ in range(BLOCK):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
    return [float(np.median(ts) * 1000.0) for ts in times]


def scorer_probe(bundle: Path, threads: int, runs: int, warmup: int) -> dict:
    """A scorer-only process (no TensorFlow) scoring 300x300 crops: median model and end-to-end ms, peak RSS.

    The bundle's files leave the page cache first: a bundle this bench has just written would otherwise be mapped
    from large folios (bench.machine.evict_from_page_cache)."""
    evict_from_page_cache(bundle)
    code = textwrap.dedent(
        f"""
        import sys, json, resource, time
        sys.modules["tensorflow"] = None
        import cv2
        import numpy as np
        from edge.scorer import Scorer
        cv2.setNumThreads(1)  # as edge.daemon sets it
        s = Scorer({str(bundle)!r}, threads={threads})
        rng = np.random.default_rng(0)
        model_ms, score_ms = [], []
        for i in range({warmup + runs}):
            crop = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
            t = time.perf_counter()
            r = s.score(crop)
            if i >= {warmup}:
                score_ms.append((time.perf_counter() - t) * 1000.0)
                model_ms.append(r.inference_ms)
        from edge.stats import proc_memory
        mem = proc_memory()
        print(json.dumps({{"peak_rss_mb": mem.get("VmHWM"), "rss_anon_mb": mem.get("RssAnon"),
                          "rss_file_mb": mem.get("RssFile"),
                          "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "threads": {threads}, "crops": {runs},
                          "median_inference_ms": float(np.median(model_ms)),
                          "median_score_ms": float(np.median(score_ms))}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **dict.fromkeys(BLAS_THREAD_ENV, "1")},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scorer probe failed: {proc.stderr[-2000:]}")
    return {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()
    }


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


def _numpy_search_copy(bundle: Path, folder: Path) -> Path | None:
    """The bundle without its search model (the device then searches in numpy, as `convert --search numpy`
    bundles do); None when the bundle has none."""
    import shutil

    from edge.bundle import JSON_FILE
    from edge.search import SEARCH_FILE

    data = json.loads((bundle / JSON_FILE).read_text())
    if data["score"]["params"]["bank"].pop("search", None) is None:
        return None
    shutil.copytree(bundle, folder, ignore=shutil.ignore_patterns(SEARCH_FILE))
    (folder / JSON_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return folder


def search_side_by_side(bundle: Path, folder: Path, runs: int, warmup: int, turns: int = 3) -> dict | None:
    """End-to-end ms of the bundle with its search model and of the same bundle searching in numpy, probes in
    alternating turns (a shared, noisy machine drifts; turns keep the two comparable): medians and their ratio."""
    plain = _numpy_search_copy(bundle, folder)
    if plain is None:
        return None
    out = {}
    for t in THREADS:
        model, numpy_ = [], []
        for _ in range(turns):
            model.append(scorer_probe(bundle, t, runs, warmup))
            numpy_.append(scorer_probe(plain, t, runs, warmup))
        m = [p["median_score_ms"] for p in model]
        n = [p["median_score_ms"] for p in numpy_]
        out[str(t)] = {
            "search_model_ms": m,
            "numpy_search_ms": n,
            "ratio_model_numpy": round(float(np.median(m) / np.median(n)), 3),
            "search_model_rss_mb": [p["peak_rss_mb"] for p in model],
            "numpy_search_rss_mb": [p["peak_rss_mb"] for p in numpy_],
        }
    return out


def _shown(path: Path) -> str:
    """A path relative to the repo when inside it (results files are committed)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def measure(
    model: str,
    config: str,
    size: int,
    runtimes: dict,
    conv: dict[str, tuple[Path, str]],
    folder: Path,
    runs: int,
    warmup: int,
    shipped: Path | None = None,
) -> dict:
    """One model's section: MACs, sizes and per thread count the Keras and TFLite ms, efficiency, ratios.

    `conv`: the reference conv's variants (convert_all), timed in turns with the model's (tflite_ms).

    `shipped`: a bundle's model.tflite timed too (as `<runtime>_int8_shipped`), to show the bench's int8 is it.
    """
    from train.model import count_macs

    net = build_model(model, config, size)
    macs = count_macs(net)
    files = convert_all(net, variants(model), REPRESENTATIVE, folder, model)
    if shipped is not None:
        files["int8_shipped"] = (shipped, "int8")
    sec: dict = {
        "input_size": size,
        "output_shape": [int(d) for d in net.output_shape[1:]],
        "model_macs": macs,
        "model_kb": {k: round(p.stat().st_size / 1024, 1) for k, (p, _) in files.items()},
        "threads": {},
    }
    for threads in THREADS:
        row = _keras_row(model, config, size, threads, runs, warmup)
        for rt, cls in runtimes.items():
            prefix = "tflite" if rt == "litert" else rt
            ms = tflite_ms(cls, [p for p, _ in (*files.values(), *conv.values())], threads, runs, warmup)
            peaks: dict[str, float] = {}  # per quant type: the faster I/O variant (I/O is not conv work)
            for (_, quant), conv_ms in zip(conv.values(), ms[len(files) :], strict=True):
                peaks[quant] = max(peaks.get(quant, 0.0), CONV_MACS / (conv_ms / 1e3))
            for (name, (_, quant)), model_ms in zip(files.items(), ms[: len(files)], strict=True):
                achieved, peak = macs / (model_ms / 1e3), peaks[quant]
                row[f"{prefix}_{name}"] = model_ms
                row[f"{prefix}_{name}_gmac_s"] = round(achieved / 1e9, 2)
                row[f"{prefix}_{name}_conv_gmac_s"] = round(peak / 1e9, 2)
                row[f"{prefix}_{name}_efficiency"] = round(achieved / peak, 3)
        row["ratio_int8_float32"] = round(row["tflite_int8"] / row["tflite_float32"], 3)
        row["ratio_int8_keras"] = round(row["tflite_int8"] / row["keras_predict"], 4)
        row["ratio_int8_keras_tf_function"] = round(row["tflite_int8"] / row["keras_tf_function"], 4)
        sec["threads"][str(threads)] = {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
        }
    return sec


def run(models: tuple[str, ...], config: str, size: int, bundle_dir: Path, runs: int, warmup: int) -> dict:
    from edge.bundle import read_bundle
    from edge.interpreter import interpreter_class

    litert, _ = interpreter_class()
    runtimes = {"litert": litert}
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteRuntime

        runtimes["tflite_runtime"] = TfliteRuntime
    except ImportError:
        log.info("tflite-runtime not installed (its wheels need numpy<2): not measured")
    result: dict = {
        "runs": runs,
        "warmup": warmup,
        "statistic": "median ms per crop (batch 1)",
        "machine": machine_record(),
        "tflite_runtime": "measured" if "tflite_runtime" in runtimes else "not installed (needs numpy<2)",
    }
    with tempfile.TemporaryDirectory(prefix="dishwatch-bench-") as tmp:
        folder = Path(tmp)
        conv = convert_all(_conv_model(), variants("cae"), 8, folder, "conv")
        result["reference_conv"] = {"shape": list(CONV), "kernel": 3, "macs": CONV_MACS}
        if "cae" in models:
            sec = {"name": f"{config} CAE", "config": config}
            sec.update(measure("cae", config, size, runtimes, conv, folder, runs, warmup))
            bundle = _temp_bundle(folder / "cae_bundle", (folder / "cae_int8.tflite").read_bytes(), size)
            sec["scorer_process"] = {str(t): scorer_probe(bundle, t, runs, warmup) for t in THREADS}
            result["cae"] = sec
        if "effnet" in models:
            info = read_bundle(bundle_dir)
            if info.score_method != "effnet-knn":
                raise SystemExit(f"--bundle {bundle_dir}: method {info.score_method}, not effnet-knn")
            bank = info.score_params["bank"]
            backbone = bundle_backbone(info.raw)
            sec = {
                "name": f"{backbone} patch features",
                "bundle": _shown(bundle_dir),
                "method": info.score_method,
            }
            sec.update(
                measure(
                    "effnet",
                    backbone,
                    info.input.height,
                    runtimes,
                    conv,
                    folder,
                    runs,
                    warmup,
                    info.model_path,
                )
            )
            h, w, dim = sec["output_shape"]
            coarse = bank.get("coarse") or {}
            if dim != bank["dim"] + coarse.get("dim", 0):
                raise SystemExit(
                    f"feature dim {dim} differs from the bundle's bank ({bank['dim']} + coarse"
                    f" {coarse.get('dim', 0)}): build_model makes the default effnet-knn network"
                )
            from train.features import coarse_cells

            cells = coarse_cells(h, w, coarse["step"]) if coarse else 0
            sec["knn"] = {
                "patches": bank["patches"],
                "dim": bank["dim"],
                "grid": [h, w],
                "coarse_patches": coarse.get("patches", 0),
                "coarse_dim": coarse.get("dim", 0),
                "macs": h * w * bank["patches"] * bank["dim"]
                + cells * coarse.get("patches", 0) * coarse.get("dim", 0),
            }
            sec["scorer_process"] = {str(t): scorer_probe(bundle_dir, t, runs, warmup) for t in THREADS}
            sec["search"] = bank.get("search", {}).get("quantization", "numpy")
            sec["search_side_by_side"] = search_side_by_side(
                bundle_dir, folder / "numpy_search", runs, warmup
            )
            result["effnet"] = sec
    result["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def _model_table(m: str, s: dict, runs: int, warmup: int) -> list[str]:
    first = next(iter(s["threads"].values()))
    lines = [
        f"== {m}: {s['name']} at {s['input_size']} px ({s['model_macs'] / 1e9:.3f} GMAC), "
        f"median ms per crop of {runs} after {warmup} warm-up",
        f"{'runtime':<26}" + "".join(f"{t + ' thr ms':>12}{'eff':>7}" for t in s["threads"]),
    ]
    for n in (k for k in first if not k.startswith("ratio_") and not k.endswith(("_gmac_s", "_efficiency"))):
        cells = ""
        for row in s["threads"].values():
            eff = row.get(f"{n}_efficiency")
            cells += f"{row[n]:>12.2f}{'' if eff is None else f'{eff:.2f}':>7}"
        lines.append(f"{n:<26}{cells}")
    for t, row in s["threads"].items():
        lines.append(
            f"{t} thread(s): int8/float32 {row['ratio_int8_float32']:.2f}, "
            f"int8/keras predict {row['ratio_int8_keras']:.3f}, int8/tf.function {row['ratio_int8_keras_tf_function']:.3f}"
        )
    for t, row in s["threads"].items():
        conv = {q: row[f"tflite_{q}_conv_gmac_s"] for q in ("float32", "float16", "int8")}
        lines.append(
            f"{t} thread(s): reference conv GMAC/s " + ", ".join(f"{q} {v:.0f}" for q, v in conv.items())
        )
    if "knn" in s:
        k = s["knn"]
        lines.append(
            f"kNN search: {k['grid'][0]}x{k['grid'][1]} patches x {k['patches']} bank rows x {k['dim']} dims "
            f"+ coarse cells x {k.get('coarse_patches', 0)} rows x {k.get('coarse_dim', 0)} dims "
            f"= {k['macs'] / 1e9:.3f} GMAC per crop (fine search: {s.get('search', 'numpy')})"
        )
    for t, c in (s.get("search_side_by_side") or {}).items():
        lines.append(
            f"{t} thread(s), end to end in turns: search model "
            + "/".join(f"{v:.1f}" for v in c["search_model_ms"])
            + " ms vs numpy search "
            + "/".join(f"{v:.1f}" for v in c["numpy_search_ms"])
            + f" ms (ratio of medians {c['ratio_model_numpy']:.2f}); peak RSS "
            f"{np.median(c['search_model_rss_mb']):.1f} vs {np.median(c['numpy_search_rss_mb']):.1f} MB"
        )
    for t, p in s["scorer_process"].items():
        lines.append(
            f"scorer-only process, {t} thread(s) ({s.get('bundle', 'int8, untrained')}, no TensorFlow): "
            f"model {p['median_inference_ms']:.2f} ms, end-to-end {p['median_score_ms']:.2f} ms per crop, "
            f"peak RSS {p['peak_rss_mb']:.0f} MB (at the end {p.get('rss_anon_mb')} MB anonymous, "
            f"{p.get('rss_file_mb')} MB of mapped library pages)"
        )
    return lines


def table(r: dict) -> str:
    lines = []
    for m in MODELS:
        if m in r:
            lines += _model_table(m, r[m], r["runs"], r["warmup"])
    ref = r["reference_conv"]
    lines.append(
        f"eff = model GMAC/s over the reference {ref['kernel']}x{ref['kernel']} conv's on {ref['shape']} "
        f"({ref['macs'] / 1e6:.0f} M MAC), same runtime, quant and threads, timed in turns"
    )
    lines.append(cpu_line(r["machine"]))
    lines.append(
        f"tflite-runtime: {r['tflite_runtime']}; load average (1, 5, 15 min) at start "
        f"{r['machine']['loadavg_start']}, end {r['machine']['loadavg_end']}"
    )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument(
        "--model", choices=(*MODELS, "both"), default="both", help="what to measure (default both)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="CAE config (default: train.model.DEFAULT_CONFIG); the effnet Keras worker gets its backbone here",
    )
    p.add_argument(
        "--size", type=int, default=128, help="CAE input size in px (default 128, the default input)"
    )
    p.add_argument(
        "--bundle",
        default=str(ROOT / "models" / "default"),
        help="effnet-knn bundle (its input size is used)",
    )
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    p.add_argument("--keras-worker", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    # before TensorFlow and OpenCV are mapped here: the scorer processes share their pages (bench.machine)
    evicted = 0 if a.keras_worker else evict_from_page_cache(*library_roots(), a.bundle)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from train.model import DEFAULT_CONFIG

    config = a.config or DEFAULT_CONFIG
    if a.keras_worker:
        print(json.dumps(keras_worker(a.model, config, a.size, a.keras_worker, a.runs, a.warmup)))
        return 0
    models = MODELS if a.model == "both" else (a.model,)
    result = run(models, config, a.size, Path(a.bundle), max(a.runs, 1), a.warmup)
    result["machine"]["page_cache_evicted_files"] = evicted
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
