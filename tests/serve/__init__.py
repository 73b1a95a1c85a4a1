"""Tests of the V2 inference server (``embed_runtime.serve``)."""
