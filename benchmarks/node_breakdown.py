"""Where an exported model's time goes, by category and op type (one JSON line): `edgekit.breakdown`.

    python benchmarks/node_breakdown.py MODEL.onnx '{"image_size": 896}' [--runs 2] [--threads 2]

is `python -m edgekit.breakdown ...`; `edgekit profile --breakdown` runs it for every point and tabulates it.
"""

import sys

from edgekit.breakdown import main

if __name__ == "__main__":
    sys.exit(main())
