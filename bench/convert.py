"""convert.py on the statue's 23 photos: seconds per stage, and the matchers side by side.

    .venv/bin/python bench/convert.py [--keep DIR]

Runs the whole pipeline once with the exhaustive matcher, then, on a copy of its work folder (so the
SIFT features are shared and only matching and what follows are redone), with the sequential matcher.
Prints each stage's seconds for both, the sequential/exhaustive ratio of the matching time, and what
each model holds (registered photos, points, mean reprojection error). The photos are copied from
../shared/data/colmap_statue_23/images; its model is not used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("GS_SHARED_DATA", REPO.parent / "shared" / "data"))

from internal.data.sfm import STAGES, ConvertOptions, convert  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    src = DATA / "colmap_statue_23" / "images"
    if not src.is_dir():
        sys.exit(f"skip: {src} not found (set GS_SHARED_DATA)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        photos = root / "photos"
        shutil.rmtree(root / "exhaustive", ignore_errors=True)
        shutil.rmtree(root / "sequential", ignore_errors=True)
        if not photos.exists():
            shutil.copytree(src, photos)
        results = {"exhaustive": convert(photos, root / "exhaustive", ConvertOptions(matcher="exhaustive"))}
        # the same features: copy the work folder, then only matching and the stages after it run again
        (root / "sequential").mkdir()
        shutil.copytree(root / "exhaustive" / "distorted", root / "sequential" / "distorted")
        results["sequential"] = convert(root / "sequential", options=ConvertOptions(matcher="sequential"))
        assert results["sequential"].ran == ["matching", "mapping", "undistortion", "resize"], results["sequential"].ran
        print(f"\n{'stage':<14}" + "".join(f"{m:>12}" for m in results))
        for s in STAGES:
            print(f"{s:<14}" + "".join(f"{r.seconds[s]:>11.1f}s" if s in r.ran else f"{'(shared)':>12}" for r in results.values()))
        total = {m: sum(r.seconds.values()) for m, r in results.items()}  # sequential: with the shared features
        print(f"{'total':<14}" + "".join(f"{t:>11.1f}s" for t in total.values()))
        for m, r in results.items():
            print(f"{m}: registered {len(r.registered)}/{r.num_photos}, {r.num_points} points, "
                  f"{r.mean_reprojection_error:.3f} px, track {r.mean_track_length:.2f}")
        ex, seq = results["exhaustive"].seconds["matching"], results["sequential"].seconds["matching"]
        print(f"matching time sequential / exhaustive: {seq / ex:.2f}  (23 photos: 253 pairs vs the sequential neighbours)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
