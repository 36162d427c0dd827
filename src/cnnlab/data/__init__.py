"""Data: the decoding policy (decode.py), the read-only pre-flight scan (scan.py), sources,
tensors and augmentation."""
