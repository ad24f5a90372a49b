"""The search layer: reads the study file, loads the task, and composes training and checkpoints
into an Optuna study.

Import the submodules you need (`hpsearch.config`, `hpsearch.config.taskload`, ...);
this package imports nothing itself, so reading a study file never pulls in torch.
"""

from __future__ import annotations
