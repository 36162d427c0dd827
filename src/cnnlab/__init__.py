"""cnnlab: convolutional neural networks, understandable and practical.

The Python door is `cnnlab.api` (train, evaluate, predict, demo, ...); models come only from
`cnnlab.models.create_model`. See README.md.
"""

__version__ = "0.1.0"
