"""Test-wide settings: never touch the network, stay small on a 2-core machine."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Offline before any hub-aware library is imported (see docs: a hub lookup otherwise retries for
# tens of seconds before failing).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
if "YOLO_CONFIG_DIR" not in os.environ:
    _yolo_dir = Path(tempfile.mkdtemp(prefix="milr-yolo-"))
    os.environ["YOLO_CONFIG_DIR"] = str(_yolo_dir)
    # ultralytics fetches Arial.ttf from the network when training/plotting unless a font is present.
    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        (_yolo_dir / "Ultralytics").mkdir(parents=True, exist_ok=True)
        for name in ("Arial.ttf", "Arial.Unicode.ttf"):
            shutil.copy(ttf, _yolo_dir / "Ultralytics" / name)
    except Exception:  # pragma: no cover - matplotlib is a dependency
        pass

# Test doubles live in tests/ (never in the package).
sys.path.insert(0, str(Path(__file__).parent))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
