"""Model families. Importing this package registers every family's constructors; use
``kwskit.models.create_model(name, num_classes=...)`` (or ``list_models()``) to get one.

A new family file registers itself with ``@register_model`` and is imported below.
"""

from kwskit.models.registry import create_model, list_models, model_info, register_model

from kwskit.models import (  # noqa: E402,F401  (registration side effects)
    bcresnet, crnn, dscnn, kwt, lambda_resnet, matchboxnet, mbconv, res15, sincconv, tcresnet,
)

__all__ = ["create_model", "list_models", "model_info", "register_model"]
