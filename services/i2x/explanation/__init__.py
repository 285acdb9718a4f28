"""ExplanationService: intensities (Eq. 4), mapping (Eq. 6-8), class and pair explanations, curation."""

from i2x.explanation.service import ExplanationServicer

__all__ = ["ExplanationServicer"]
