"""wsc: a compiler from PyTorch to wafer-scale dataflow machines."""
