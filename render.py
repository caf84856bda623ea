"""Fly-through videos of a trained model (H.264 mp4), on the CPU with our rasterizer or on a GPU with gsplat.

    python render.py outputs/lego --traj ellipse                    # orbit around the training cameras' focus
    python render.py outputs/garden --traj spiral --frames 240      # forward-facing spiral
    python render.py outputs/lego/checkpoints/last.ckpt --traj interp --resolution 800x800 --depth
    python render.py outputs/lego --traj train --save_images        # the training views, as video and PNGs
    python render.py point_cloud.ply --traj path.json               # a camera path saved by the viewer
    python render.py point_cloud.ply --traj ellipse --cameras SCENE # cameras from a scene (or a cameras.json)

PATH is a checkpoint, an output folder (its latest checkpoint) or a .ply. The logic lives in
internal/render_video.py (rendering and video) and internal/trajectories.py (the paths).
"""

import argparse
import os
import sys

# As main.py: idle OpenMP threads must not spin while the video encoder wants the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv=None):
    from internal.render_video import TRAJECTORIES, VideoOptions

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="checkpoint (*.ckpt), output folder (outputs/<name>) or Gaussian .ply")
    p.add_argument("--traj", default="ellipse", metavar="|".join(TRAJECTORIES) + "|PATH.json",
                   help="the camera path (default: ellipse)")
    p.add_argument("-o", "--output", default=None, help="the mp4 to write (default: <output folder>/videos/<traj>_<step>.mp4)")
    p.add_argument("--frames", type=int, default=None, help="number of frames (default: 120; train: every camera; JSON: its own)")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: 30, or the JSON's)")
    p.add_argument("--resolution", default=None, help="WxH or W (default: the training cameras' size, or the JSON's)")
    p.add_argument("--depth", action="store_true", help="the colour-mapped depth beside each frame (near bright, far dark)")
    p.add_argument("--appearance_group", default=None, help="render with this appearance group (models trained with an appearance model)")
    p.add_argument("--save_images", action="store_true", help="also save every frame as PNG, in a folder named after the video")
    p.add_argument("--cameras", default=None, help="training cameras when the model has no cameras.json beside it: a cameras.json or a scene folder")
    p.add_argument("--sh_degree", type=int, default=None, help="SH degree to render (default: all the model has)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "torch", "gsplat"], help="rasterizer (auto: gsplat on a GPU, else our CPU one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quality", type=float, default=VideoOptions.quality, help="H.264 quality 0..10 (default: 8)")
    a = p.parse_args(argv)
    return a.path, VideoOptions(
        traj=a.traj, output=a.output, frames=a.frames, fps=a.fps, resolution=a.resolution, depth=a.depth,
        appearance_group=a.appearance_group, save_images=a.save_images, cameras=a.cameras, sh_degree=a.sh_degree,
        backend=a.backend, device=a.device, quality=a.quality,
    )


def main(argv=None) -> int:
    from internal.camera_path import CameraPathError
    from internal.cli_tools import run_tool
    from internal.loading import ModelLoadError
    from internal.render_video import RenderVideoError, render_video

    path, options = parse_args(argv)
    return run_tool(lambda: render_video(path, options), errors=(ModelLoadError, CameraPathError, RenderVideoError),
                    interrupted="interrupted; no video was written (it is only moved into place when complete)")


if __name__ == "__main__":
    sys.exit(main())
