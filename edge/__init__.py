"""dishwatch edge: everything the device runs (numpy, OpenCV, a TFLite interpreter, paho-mqtt; never TensorFlow).

train/ and convert/ import the shared pieces from here (preprocessing, scoring, bundle format) so that a score
computed in training, in calibration and on the device is the same number.
"""

__version__ = "0.1.0"
