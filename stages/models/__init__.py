"""Architecture registry: ``create_model(name, num_classes, image_size)``."""

from stages.models import convnet, zoo  # noqa: F401  (register their entries)
from stages.models.registry import ARCHITECTURES, create_model, embeds, list_models, per_sample, reinitialize  # noqa: F401
