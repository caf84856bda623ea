"""Photos -> a COLMAP scene that `main.py fit --data.path SCENE` reads as it is (pycolmap, CPU, offline).

    python convert.py PHOTOS -o SCENE                  # a folder of photos
    python convert.py SCENE                            # SCENE/input/ holds the photos (the original 3DGS layout)
    python convert.py PHOTOS -o SCENE --resize 2 4 8   # also images_2, images_4, images_8
    python convert.py SCENE --redo mapping             # re-run from one stage (finished ones are skipped)

The logic lives in internal/data/sfm.py.
"""

import argparse
import sys


def parse_args(argv=None):
    from internal.data.sfm import CAMERA_MODELS, CAMERA_MODES, MATCHERS, STAGES, ConvertOptions

    d = ConvertOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder of photos, or a scene folder with input/ (or images/) holding them")
    p.add_argument("-o", "--output", default=None, help="scene folder to write (default: SOURCE when it has input/)")
    p.add_argument("--matcher", choices=MATCHERS, default=d.matcher,
                   help=f"pairs to match: exhaustive (all pairs), sequential (video frames / ordered captures), spatial (GPS), "
                        f"vocabtree (needs --vocab_tree); auto: exhaustive up to 100 photos, else sequential (default: {d.matcher})")
    p.add_argument("--camera_model", choices=CAMERA_MODELS, default=d.camera_model, help=f"lens model to estimate (default: {d.camera_model})")
    p.add_argument("--camera_mode", choices=CAMERA_MODES, default=d.camera_mode,
                   help="auto: one camera per image size (and EXIF camera and focal length); single: one for all photos; "
                        "per_folder; per_image (default: auto)")
    p.add_argument("--single_camera", action="store_true", help="same as --camera_mode single")
    p.add_argument("--resize", type=int, nargs="*", default=[], metavar="N",
                   help="also write images_N down-scaled by N (e.g. --resize 2 4 8); train with --data.params.colmap.down_sample_factor N")
    p.add_argument("--max_image_size", type=int, default=d.max_image_size, help=f"longest side SIFT sees (default: {d.max_image_size})")
    p.add_argument("--max_num_features", type=int, default=d.max_num_features, help=f"SIFT features per photo (default: {d.max_num_features})")
    p.add_argument("--sequential_overlap", type=int, default=d.sequential_overlap, help=f"sequential matcher: neighbours matched per photo (default: {d.sequential_overlap})")
    p.add_argument("--vocab_tree", default=None, help="vocabulary tree file for --matcher vocabtree (or loop detection with sequential)")
    p.add_argument("--min_registered", type=float, default=d.min_registered,
                   help=f"fail when fewer than this fraction of the photos is registered (default: {d.min_registered})")
    p.add_argument("--num_threads", type=int, default=d.num_threads, help="threads (default: -1, all cores)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the mapper's random choices (default: {d.seed})")
    p.add_argument("--force", action="store_true", help="redo every stage (and replace images/ and sparse/ that convert.py did not write)")
    p.add_argument("--redo", choices=STAGES, default=None, help="redo this stage and the ones after it")
    p.add_argument("--verbose", action="store_true", help="also show COLMAP's own log (always kept in SCENE/distorted/logs/)")
    args = p.parse_args(argv)
    options = ConvertOptions(
        matcher=args.matcher, camera_model=args.camera_model,
        camera_mode="single" if args.single_camera else args.camera_mode, resize=tuple(sorted(set(args.resize))),
        max_image_size=args.max_image_size, max_num_features=args.max_num_features,
        sequential_overlap=args.sequential_overlap, vocab_tree=args.vocab_tree, min_registered=args.min_registered,
        num_threads=args.num_threads, seed=args.seed,
    )
    return args, options


def main(argv=None) -> int:
    from internal.cli_tools import run_tool
    from internal.data.sfm import convert, print_summary

    args, options = parse_args(argv)

    def work():
        result = convert(args.source, args.output, options, force=args.force, redo=args.redo, verbose=args.verbose)
        print_summary(result)

    return run_tool(work, interrupted="interrupted; finished stages are kept: run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
