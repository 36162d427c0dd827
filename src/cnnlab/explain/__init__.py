"""Explain what a CNN computes: the convolution lab (``conv``), layer traces and CAMs.

Computing only; drawing lives in ``cnnlab.report``. Submodules are imported on demand
(``from cnnlab.explain import conv``) so that importing this package stays cheap.
"""
