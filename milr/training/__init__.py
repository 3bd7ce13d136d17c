"""Training code (never imported by inference): one module per thing trained.

* :mod:`milr.training.detector` -- the world detector, a multi-class YOLO trained with ultralytics
  on rendered MiniMUG scenes (``milr train-detector``).
"""
