"""Hardware models: the processing-element array model of fine-grained sparse layers."""

from prunewise.hw.pe_array import LayerCycles, PEArray, layer_cycles, model_cycles, total

__all__ = ["LayerCycles", "PEArray", "layer_cycles", "model_cycles", "total"]
