"""Video: decoding policy (io), builtin:moving-shapes (synthetic), clip classification with 3D CNNs
and per-frame 2D models (train), frame-by-frame prediction with smoothing, events, tracking and line
counting (predict, tracking)."""
