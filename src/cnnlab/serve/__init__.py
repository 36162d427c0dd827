"""A local web explorer for a trained run: upload a picture, see the classes, the layer trace and
the Grad-CAM, or the mask of a segmentation run, or the boxes of a detection run
(``cnnlab serve RUN``). See :mod:`cnnlab.serve.app` and ``docs/deploy.md``.

Importing this package does not import FastAPI; :func:`create_app` and :func:`serve` do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "serve"]


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """See :func:`cnnlab.serve.app.create_app`."""
    from cnnlab.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args: Any, **kwargs: Any) -> None:
    """See :func:`cnnlab.serve.app.serve`."""
    from cnnlab.serve.app import serve as _serve

    _serve(*args, **kwargs)
