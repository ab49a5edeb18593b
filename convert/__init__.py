"""dishwatch convert: Keras model -> quantized TFLite + bundle.json (everything the device needs)."""
