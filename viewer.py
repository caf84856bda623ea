"""Web viewer for Gaussian splats (the app lives in internal/viewer/).

    python viewer.py outputs/lego/checkpoints/last.ckpt start     # a checkpoint of ours
    python viewer.py outputs/lego                                  # an output folder: its newest checkpoint
    python viewer.py point_cloud.ply --port 8081                   # any INRIA-layout .ply
"""

from internal.viewer.cli import main

if __name__ == "__main__":
    main()
