"""`param()`: one config field, with its help text and the checks the loader applies, and the
defaults that several config classes share.

    lam: float = param(0.95, "GAE lambda", ge=0, le=1)

Checks (rlhf_dist.config.loader): `ge`, `gt`, `le`, `lt` bound a number (each item of a list of
numbers); a `Literal[...]` type lists the allowed values; floats must be finite unless
`finite=False`. A list, dict or dataclass default is wrapped in a factory, so instances never
share it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# The built-in task (rlhf_dist/tasks/instruct): any object with the task protocol, as module:attr or file.py:attr.
DEFAULT_TASK = "rlhf_dist.tasks.instruct:task"
# The simulated labeler's Bradley-Terry temperature on gold scores in [0, 1]: a 0.1 gold gap is
# preferred 73% of the time (sigmoid(1)); docs/tasks.md.
DEFAULT_LABELER_TEMPERATURE = 0.1
# BPE vocabulary of a random-init base model (256 bytes + merges + specials).
DEFAULT_VOCAB_SIZE = 1024


def param(default: Any, help: str, **checks: Any) -> Any:
    """A dataclass field with `help` and the loader's checks (`ge`, `gt`, `le`, `lt`, `finite`)."""
    metadata = {"help": help, **checks}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
