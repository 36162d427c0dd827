"""`python -m cnnlab.models`: rewrite cnnlab/cli/zoo.json, the zoo listing `cnnlab models` prints
without importing torch (see :func:`cnnlab.models.summary.zoo_record`), after a model is added."""

import json
from pathlib import Path

import cnnlab
from cnnlab.models.summary import zoo_record

path = Path(cnnlab.__file__).parent / "cli" / "zoo.json"
path.write_text(json.dumps(zoo_record(), indent=1) + "\n", encoding="utf-8")
print(f"wrote {path}")
