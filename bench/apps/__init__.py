"""The benchmark workloads, written once per system with the same shape."""
