"""Write a tiny int8-weight native artifact plus torch reference outputs, for check_native.py to
run in an environment without torch (see .ci/run).

    python tests/minimal_env/make_artifact.py OUT_DIR      # writes OUT_DIR/artifact, OUT_DIR/expected.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import sapiens2_edge as s2e
from sapiens2_edge.exporters import verification_inputs
from sapiens2_edge.models.arch import ArchSpec, HeadSpec
from sapiens2_edge.models.model import build_model

sys.path.insert(0, str(Path(__file__).parent))
from check_native import image  # noqa: E402 - the synthetic image both sides use

ARCH = ArchSpec(32, 4, 2, (2, 1, 1, 2), 64, name="minimal")
HEAD = HeadSpec("seg", 32, 29, deconv=(8, 8), conv=(8,), conv_kernel=1)
SIZE = (64, 48)


def main(out: Path) -> None:
    model = build_model(ARCH, head=HEAD, seed=3)
    qmodel, _ = s2e.quantize(model, scheme="int8-weight", progress=False)
    root = s2e.export(qmodel, out / "artifact", format="native", input_size=SIZE, max_batch=2, overwrite=True)
    x = verification_inputs(SIZE, batch=2, seed=5)
    with torch.inference_mode():
        logits = qmodel(torch.from_numpy(x)).numpy()
    labels = s2e.Predictor(qmodel, input_size=SIZE)(image()).labels
    np.savez(out / "expected.npz", x=x, logits=logits, labels=labels)
    print(f"wrote {root} and {out / 'expected.npz'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
