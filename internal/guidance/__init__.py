"""Guidance: extra losses on rendered views beside the photometric one (internal/guidance/base.py).

    python main.py fit ... --model.guidance SDSGuidance --model.guidance.init_args.model_path SD_FOLDER

Importing this package imports neither diffusers nor transformers: they are an optional extra
(requirements-sds.txt), loaded when a guidance that needs them starts.
"""

from .base import Guidance, GuidanceError, GuidanceOutput
from .sds import SDSGuidance
from .views import NovelViews

__all__ = ["Guidance", "GuidanceError", "GuidanceOutput", "NovelViews", "SDSGuidance"]
