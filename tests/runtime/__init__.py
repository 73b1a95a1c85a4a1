"""Tests of the TensorFlow-free runtime."""
