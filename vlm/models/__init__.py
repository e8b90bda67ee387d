"""Models behind finecap's common calls. Today: Hugging Face image-to-text models (:class:`HFCaptioner`).

Example:
    >>> from vlm.models import truncate_at_period
    >>> truncate_at_period("two cats. on a mat")
    'two cats.'
"""

from vlm.models.hf import HFCaptioner, load_captioner, truncate_at_period

__all__ = ["HFCaptioner", "load_captioner", "truncate_at_period"]
