"""InterpretationService: saliency, confidences and predictions per checkpoint, fanned out with Ray."""

from i2x.interpretation.service import InterpretationServicer

__all__ = ["InterpretationServicer"]
