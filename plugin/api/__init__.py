"""Kubelet Device Plugin API v1beta1: api.proto and the modules generated from it (generate.py)."""
