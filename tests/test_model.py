"""The Inception CAE: shapes, builtin-only layers (TFLite), MAC count, configs, load_run errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.errors import UserError
from train.model import CONFIGS, CaeConfig, build_cae, count_macs, get_config, load_run

keras = pytest.importorskip("keras")

TINY = CaeConfig(name="tiny", filters=(4, 8), input_size=16)


def test_tiny_model_shapes_range_and_layers():
    model = build_cae(TINY)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= {
        "InputLayer",
        "Conv2D",
        "BatchNormalization",
        "LeakyReLU",
        "MaxPooling2D",
        "Concatenate",
        "UpSampling2D",
        "Activation",
    }, kinds
    ups = [layer for layer in model.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert len(ups) == 2 and all(u.interpolation == "nearest" for u in ups)
    # an inception block: four branches of f filters concatenated -> 4f channels
    assert model.get_layer("enc0_concat").output.shape[-1] == 16
    assert model.get_layer("enc1_concat").output.shape[-1] == 32


def test_seed_config_is_the_reference():
    seed = CONFIGS["seed"]
    assert seed.level_filters == (32, 32, 64, 64, 128, 128) and seed.input_size == 128 and seed.depth == 6
    model = build_cae(seed)
    assert model.output.shape[1:] == (128, 128, 3)
    assert model.get_layer("enc5_down").output.shape[1:] == (2, 2, 512)


def test_count_macs_hand_computed():
    # enc0 at 4x4, 3 -> 2 per branch: 16 * (1 + 9 + 25 + 1) * 3 * 2 = 3456
    # dec0 at 2x2, 8 -> 2 per branch: 4 * 36 * 8 * 2 = 2304;  out conv at 4x4: 16 * 9 * 8 * 3 = 3456
    assert count_macs(CaeConfig(filters=(2,), input_size=4)) == 3456 + 2304 + 3456


def test_count_macs_counts_depthwise_convs():
    """Keras 3's DepthwiseConv2D is not a Conv2D: EfficientNet-Lite0 was 12 % under-counted without its branch."""
    inp = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)  # 64 * 9 * 8 = 4608
    out = keras.layers.Conv2D(5, 1)(x)  # 64 * 1 * 8 * 5 = 2560
    assert count_macs(keras.Model(inp, out)) == 4608 + 2560


def test_cheaper_variants_are_cheaper():
    macs = {n: count_macs(c) for n, c in CONFIGS.items()}
    assert macs["quarter"] < macs["half"] < macs["seed"]
    assert 2.0e9 < macs["seed"] < 3.0e9


def test_config_errors_and_json_round_trip():
    with pytest.raises(UserError, match="multiple of 2\\*\\*depth = 64"):
        get_config("seed", input_size=100)
    with pytest.raises(UserError, match="unknown"):
        get_config("huge")
    cfg = get_config("half", input_size=64)
    assert CaeConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_converts_to_tflite_with_builtin_ops_only(tmp_path):
    """DESIGN §7 recipe (fixed batch 1 SavedModel) with builtins only; LiteRT output matches Keras."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    model = build_cae(TINY)
    model.export(
        str(tmp_path / "sm"),
        format="tf_saved_model",
        input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)],
    )
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    (tmp_path / "m.tflite").write_bytes(conv.convert())
    it = Interpreter(model_path=str(tmp_path / "m.tflite"))
    it.allocate_tensors()
    x = np.random.default_rng(1).random((1, 16, 16, 3)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=1e-4)


def test_load_run_round_trip(tmp_path):
    model = build_cae(TINY)
    model.save(tmp_path / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({"cae": TINY.to_json()}))
    loaded, config = load_run(tmp_path)
    x = np.random.default_rng(2).random((1, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert config["cae"]["filters"] == [4, 8]


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(UserError, match="config.json: missing"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: unreadable"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="model.keras: missing"):
        load_run(tmp_path)
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="model.keras: cannot load"):
        load_run(tmp_path)
