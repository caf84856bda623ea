"""Write SCENE/NAME.json, the appearance groups of a scene's images (internal/data/groups.py).

    python generate_image_apperance_groups.py SCENE --camera | --image | --dirname | --exif [--name NAME] [--overwrite]
    python main.py fit ... --model.renderer AppearanceMLPRenderer --data.params.colmap.appearance_groups NAME

The name keeps the original project's spelling, for its users' scripts.
"""

import argparse
import sys

from internal.data.groups import DEFAULT_NAME, group_file, make_groups, unregistered_images, write_groups


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", help="scene folder: COLMAP (images/ + sparse/0 or sparse/, .bin or .txt) or Blender")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--camera", action="store_true", help="one group per COLMAP camera")
    how.add_argument("--image", action="store_true", help="one group per image")
    how.add_argument("--dirname", action="store_true", help="one group per image sub-folder")
    how.add_argument("--exif", action="store_true", help="one group per EXIF exposure time, ISO, aperture and white balance")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"output SCENE/NAME.json (default {DEFAULT_NAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.add_argument("--sparse_dir", default=None, help="model folder relative to SCENE (default sparse/0, else sparse)")
    parser.add_argument("--image_dir", default="images", help="image folder relative to SCENE (read by --exif)")
    args = parser.parse_args(argv)
    mode = next(m for m in ("camera", "image", "dirname", "exif") if getattr(args, m))

    from internal.data.errors import DatasetError

    out = group_file(args.scene, args.name)
    try:
        if out.exists() and not args.overwrite:  # before reading every photo's EXIF
            raise DatasetError(f"{out}: already exists; pass --overwrite to replace it, or choose another --name")
        from rich.progress import track

        groups = make_groups(args.scene, mode, args.sparse_dir, args.image_dir,
                             progress=lambda it: track(it, description="reading EXIF", transient=True))
        write_groups(out, groups, overwrite=args.overwrite)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(len(v) for v in groups.values())
    print(f"{out}: {len(groups)} groups over {n} images (--{mode})")
    extra = unregistered_images(args.scene, (name for names in groups.values() for name in names), args.image_dir)
    if extra:
        print(f"note: {len(extra)} image files in {args.image_dir}/ are not in the model and get no group (first: {extra[0]}); "
              "COLMAP did not register them, so training does not use them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
