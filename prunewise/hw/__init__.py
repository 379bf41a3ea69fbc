"""Hardware models: the PE-array model of fine-grained sparse layers; the DPU model (`hw.dpu`)."""

from prunewise.hw.pe_array import LayerCycles, PEArray, layer_cycles, model_cycles, total

__all__ = ["LayerCycles", "PEArray", "layer_cycles", "model_cycles", "total"]
