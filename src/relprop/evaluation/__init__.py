"""Measuring explanations: faithfulness, randomisation, stability, background share (:mod:`.metrics`)."""
