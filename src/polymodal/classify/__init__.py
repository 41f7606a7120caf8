"""Tasks ``classify`` and ``align``: a head (fusion, prompts, or contrastive projections) over encoders.

``model`` (the model, rebuilt from a config), ``prompt_head`` (zero-shot / CoOp heads), ``predict`` (batches and
predictions over a split), ``task`` (the ``Task`` the training loop runs), ``results`` (metrics.json and
predictions.csv of the test split), ``run`` (a finished run loaded back: the one inference path).
"""

from .model import MultimodalClassifier, build_classifier
from .run import Run, load_run, prepare_items, read_split
from .task import HeadTask, build

__all__ = ["HeadTask", "MultimodalClassifier", "Run", "build", "build_classifier", "load_run", "prepare_items",
           "read_split"]
