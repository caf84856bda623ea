"""Photos -> COLMAP scene with pycolmap (no COLMAP binary): what convert.py runs.

    from internal.data.sfm import convert, ConvertOptions
    result = convert("photos/", "scenes/statue", ConvertOptions(resize=(2, 4)))

Stages, each on the CPU, each skipped on a re-run when its inputs have not changed:

    features      SIFT keypoints of every photo into distorted/database.db
    matching      exhaustive, sequential, spatial or vocabulary-tree pairs, geometrically verified
    mapping       incremental SfM; the largest model -> distorted/sparse/0
    undistortion  to PINHOLE cameras -> images/ and sparse/0/ (what 3DGS trains on)
    resize        optional images_2/4/8 copies (--resize)

The scene written is the original 3DGS convert.py's layout, which internal/data/colmap.py reads as it is:

    SCENE/images/              undistorted photos (registered ones only)
    SCENE/sparse/0/            cameras.bin (PINHOLE), images.bin, points3D.bin
    SCENE/images_N/            the same photos down-scaled by N; train on them with
                               --data.params.colmap.down_sample_factor N
    SCENE/distorted/           working files: database.db, sparse/0 (model of the original photos),
                               convert.json (what each stage did, for re-runs), logs/ (COLMAP's log)

Measured facts this relies on (pycolmap 4.2.1, DESIGN.md): `undistort_images` writes `sparse/*.bin`
without `0/` (moved here); CameraMode.SINGLE fails on photos of mixed sizes; COLMAP's AUTO mode makes a
camera whenever the size differs from the previous photo's, so "auto" here groups the photos itself
(size + EXIF make/model/focal length) and extracts each group as one camera. The default camera model
is SIMPLE_RADIAL (COLMAP's): on the statue's 23 photos OPENCV (the original convert.py's) registered
2 of 23 against 23 of 23. Reading the database while COLMAP writes it must not take a lock (COLMAP
aborts on "database is locked"), so the progress polls open it `immutable`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from ..atomic import atomic_write
from .errors import DatasetError

STAGES = ("features", "matching", "mapping", "undistortion", "resize")
MATCHERS = ("auto", "exhaustive", "sequential", "spatial", "vocabtree")
CAMERA_MODES = ("auto", "single", "per_folder", "per_image")
# Models COLMAP can estimate from scratch and undistort (fisheye ones too: the result is PINHOLE).
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
                 "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE", "THIN_PRISM_FISHEYE")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# auto matcher: exhaustive up to this many photos (4,950 pairs); on 2 cores 292 photos (42k pairs) took 31 min.
EXHAUSTIVE_MAX_IMAGES = 100
STATE_FILE = "convert.json"
STATE_VERSION = 1


@dataclass
class ConvertOptions:
    matcher: str = "auto"
    """auto: exhaustive up to 100 photos, else sequential (ordered captures, video frames)."""
    camera_model: str = "SIMPLE_RADIAL"
    camera_mode: str = "auto"
    """auto: one camera per image size (and EXIF camera/focal length); single; per_folder; per_image."""
    resize: tuple[int, ...] = ()
    """Down-scaled copies to write: images_2, images_4, images_8 for (2, 4, 8)."""
    max_image_size: int = 3200
    """SIFT runs on photos down-scaled to this longest side (COLMAP's default)."""
    max_num_features: int = 8192
    sequential_overlap: int = 10
    vocab_tree: Optional[str] = None
    """Vocabulary tree file (matcher vocabtree, or loop detection for sequential)."""
    min_registered: float = 0.5
    """Fail when the model registers fewer than this fraction of the photos."""
    num_threads: int = -1
    seed: int = 0
    jpeg_quality: int = 95


@dataclass
class ConvertResult:
    scene: Path
    photos: Path
    num_photos: int
    registered: list[str]
    left_out: list[str]
    num_points: int
    mean_reprojection_error: float
    mean_track_length: float
    num_cameras: int
    seconds: dict[str, float]  # stage -> seconds it took (in this run or the run that did it)
    ran: list[str]  # stages run now (the others were already done)
    other_models: list[int] = field(default_factory=list)  # registered counts of the smaller models


# ------------------------------------------------------------------------------------------------
# where things are


def find_photos(folder: Path) -> tuple[list[str], list[str]]:
    """(photo names relative to `folder`, sorted; other files found) — sub-folders included, hidden
    files and folders skipped."""
    photos, others = [], []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/")
            (photos if f.lower().endswith(PHOTO_EXTENSIONS) else others).append(rel)
    return sorted(photos), others


def _has_photos(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS for p in folder.iterdir())


def resolve_paths(source: Path, output: Optional[Path]) -> tuple[Path, Path]:
    """(photo folder, scene folder) for `convert.py SOURCE [-o OUTPUT]`.

    SOURCE is a scene made by an earlier run (continue it), a scene folder with input/ (the original
    convert.py's layout: the scene is SOURCE unless -o), a scene folder with only images/ (its photos;
    -o needed, since images/ receives the undistorted photos), or a folder of photos (-o needed).
    """
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"{source}: does not exist; give a folder of photos (or a scene folder with input/ or images/)")
    if not source.is_dir():
        raise DatasetError(f"{source}: is a file; give the folder that holds the photos")
    state = _read_state(source / "distorted" / STATE_FILE)
    if state is not None and (output is None or _same(output, source)):
        photos = Path(state["photos"])
        if not photos.is_dir():
            raise DatasetError(f"{source / 'distorted' / STATE_FILE}: the photos of this scene were in {photos}, which no longer exists; restore them, or convert again from where they are now with -o {source} --force")
        return photos, source
    if (source / "input").is_dir():
        photos, scene = source / "input", output or source
    elif (source / "images").is_dir() and not _has_photos(source):
        if output is None or _same(output, source):
            raise DatasetError(
                f"{source / 'images'}: would be overwritten by the undistorted photos; give -o SCENE (a new folder for the scene), "
                f"or rename {source / 'images'} to {source / 'input'} (the original convert.py's layout)"
            )
        photos, scene = source / "images", output
    else:
        if output is None:
            raise DatasetError(f"{source}: is a folder of photos; give -o SCENE, the folder to write the scene to (or put the photos in SCENE/input and run convert.py SCENE)")
        photos, scene = source, output
    scene = Path(scene)
    if _same(scene, photos) or _inside(scene, photos):
        raise DatasetError(f"{scene}: the scene folder would be inside the photo folder {photos}; choose -o outside it")
    return photos, scene


def _same(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _inside(a: Path, b: Path) -> bool:
    return Path(a).resolve().is_relative_to(Path(b).resolve())


# ------------------------------------------------------------------------------------------------
# state: what each stage did, so that a re-run skips what is done


def _read_state(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # an unreadable state only costs a full re-run
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not isinstance(state.get("stages"), dict) or "photos" not in state:
        return None
    return state


def _write_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(state, indent=1).encode()))


def _key(previous: str, inputs: dict) -> str:
    return hashlib.sha1(json.dumps([previous, inputs], sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# running one pycolmap call with a progress bar


def _run_with_progress(work: Callable[[object], object], poll: Callable[[], Optional[int]], description: str, total: Optional[int], unit: str, out):
    """Run `work(cancellation_token)` in a thread, updating a bar from `poll()` until it ends.

    Ctrl-C cancels the pycolmap call (through its cancellation token) and re-raises KeyboardInterrupt.
    """
    import pycolmap

    from ..progress import progress_bar

    token = pycolmap.CancellationToken()
    box: dict = {}

    def target():
        try:
            box["result"] = work(token)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"colmap-{description}", daemon=True)
    with progress_bar(description, total, unit, out) as bar:
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.25)
                n = poll()
                if n is not None:
                    bar.update(completed=min(n, total) if total is not None else n)
        except KeyboardInterrupt:
            token.cancel()
            thread.join()
            raise
        n = poll()
        if n is not None:
            bar.update(completed=min(n, total) if total is not None else n)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _count_rows(db: Path, table: str) -> Callable[[], Optional[int]]:
    """A poll of the number of rows of `table`, read without taking a lock (see the module doc)."""
    last = [0]
    uri = db.resolve().as_uri() + "?immutable=1"

    def poll() -> Optional[int]:
        if not db.is_file():
            return last[0]
        try:
            con = sqlite3.connect(uri, uri=True, timeout=0.05)
            try:
                last[0] = int(con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            pass  # a half-written page or no table yet: keep the last count
        return last[0]

    return poll


def _count_files(folder: Path) -> Callable[[], int]:
    def poll() -> int:
        return sum(len(files) for _, _, files in os.walk(folder)) if folder.is_dir() else 0

    return poll


# ------------------------------------------------------------------------------------------------
# the converter


class _Converter:
    def __init__(self, photos: Path, scene: Path, options: ConvertOptions, out):
        self.photos, self.scene, self.o, self.out = photos, scene, options, out
        self.work = scene / "distorted"
        self.db = self.work / "database.db"
        self.sparse = self.work / "sparse"
        self.state_path = self.work / STATE_FILE

    def say(self, text: str) -> None:
        self.out.print(text)

    # -- input checks -----------------------------------------------------------------------------

    def read_photos(self) -> tuple[list[str], dict[str, tuple]]:
        names, others = find_photos(self.photos)
        if len(names) < 2:
            found = f"{len(names)} photo" + ("" if len(names) == 1 else "s") + (f" ({names[0]})" if names else "")
            extra = f" and {len(others)} other files (e.g. {others[0]})" if others else ""
            raise DatasetError(
                f"{self.photos}: holds {found}{extra}; structure from motion needs at least 2 overlapping photos "
                f"({', '.join(PHOTO_EXTENSIONS)}), better 20 or more: put them in this folder"
            )
        info: dict[str, tuple] = {}
        for n in names:
            path = self.photos / n
            try:
                with Image.open(path) as im:
                    exif = im.getexif()
                    focal = exif.get_ifd(0x8769).get(0x920A)  # Exif FocalLength
                    info[n] = (im.size, str(exif.get(0x010F, "")).strip(), str(exif.get(0x0110, "")).strip(), str(focal or ""))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise DatasetError(f"{path}: cannot be read as a photo ({type(e).__name__}: {e}); replace it with a valid JPEG/PNG or remove it from {self.photos}") from None
        return names, info

    # -- stages -------------------------------------------------------------------------------------

    def features(self, names: list[str], info: dict[str, tuple]) -> str:
        import pycolmap

        for p in (self.db, Path(str(self.db) + "-journal"), Path(str(self.db) + "-wal"), Path(str(self.db) + "-shm")):
            p.unlink(missing_ok=True)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = self.o.camera_model
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = self.o.max_image_size
        extraction.num_threads = self.o.num_threads
        extraction.sift.max_num_features = self.o.max_num_features

        mode = self.o.camera_mode
        if mode == "auto":
            groups: dict[tuple, list[str]] = defaultdict(list)
            for n in names:
                groups[info[n]].append(n)
            calls = [(pycolmap.CameraMode.SINGLE, g) for g in groups.values()]
            what = f"{len(groups)} camera{'s' if len(groups) > 1 else ''} ({self.o.camera_model}, one per image size)"
        elif mode == "single":
            sizes = {info[n][0] for n in names}
            if len(sizes) > 1:
                a = names[0]
                b = next(n for n in names if info[n][0] != info[a][0])
                raise DatasetError(
                    f"{self.photos}: --single_camera needs photos of one size, but {a} is {info[a][0][0]}x{info[a][0][1]} and "
                    f"{b} is {info[b][0][0]}x{info[b][0][1]}; drop --single_camera (one camera per image size)"
                )
            calls = [(pycolmap.CameraMode.SINGLE, names)]
            what = f"1 camera ({self.o.camera_model})"
        else:
            calls = [({"per_folder": pycolmap.CameraMode.PER_FOLDER, "per_image": pycolmap.CameraMode.PER_IMAGE}[mode], names)]
            what = f"{self.o.camera_model}, {mode.replace('_', ' ')}"

        def work(token):
            for camera_mode, subset in calls:
                if token.is_cancelled:
                    return
                pycolmap.extract_features(self.db, self.photos, image_names=subset, camera_mode=camera_mode,
                                          reader_options=reader, extraction_options=extraction,
                                          device=pycolmap.Device.cpu, cancellation_token=token)

        _run_with_progress(work, _count_rows(self.db, "keypoints"), "features", len(names), "image", self.out)
        db = pycolmap.Database.open(self.db)
        try:
            in_db = {im.name: im.image_id for im in db.read_all_images()}
            missing = [n for n in names if n not in in_db]
            empty = [n for n in names if n in in_db and db.num_keypoints_for_image(in_db[n]) == 0]
        finally:
            db.close()
        if missing:
            raise DatasetError(
                f"{self.photos / missing[0]}: COLMAP could not read this photo{_more(missing)} (see {self.work / 'logs'}); "
                f"convert it to JPEG or PNG, or remove it from {self.photos}"
            )
        if len(empty) == len(names):
            raise DatasetError(f"{self.photos}: no photo has any SIFT feature (blank or featureless images?); photograph a textured scene")
        return what + (f"; {len(empty)} without features ({_names(empty)})" if empty else "")

    def matcher(self, n: int) -> str:
        m = self.o.matcher
        if m != "auto":
            return m
        if n <= EXHAUSTIVE_MAX_IMAGES:
            return "exhaustive"
        return "vocabtree" if self.o.vocab_tree else "sequential"

    def matching(self, n: int) -> str:
        import pycolmap

        db = pycolmap.Database.open(self.db)
        try:  # a matching stage that re-runs starts from no matches (COLMAP skips pairs already matched)
            db.clear_matches()
            db.clear_two_view_geometries()
        finally:
            db.close()
        m = self.matcher(n)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = self.o.num_threads
        vocab = self.o.vocab_tree
        if vocab is not None and not Path(vocab).is_file():
            raise DatasetError(f"{vocab}: vocabulary tree file does not exist; fix --vocab_tree (COLMAP's vocab_tree_*.bin)")
        total: Optional[int] = None
        if m == "exhaustive":
            pairing = pycolmap.ExhaustivePairingOptions()
            call = pycolmap.match_exhaustive
            total = n * (n - 1) // 2
        elif m == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = self.o.sequential_overlap
            if vocab:
                pairing.loop_detection = True
                pairing.vocab_tree_path = str(vocab)
            call = pycolmap.match_sequential
            db = pycolmap.Database.open(self.db)
            try:
                total = len(pycolmap.SequentialPairGenerator(pairing, db).all_pairs())
            finally:
                db.close()
        elif m == "spatial":
            pairing = pycolmap.SpatialPairingOptions()
            call = pycolmap.match_spatial
        else:
            if not vocab:
                raise DatasetError(f"{self.photos}: --matcher vocabtree needs --vocab_tree FILE (COLMAP's vocab_tree_*.bin; none can be downloaded here)")
            pairing = pycolmap.VocabTreePairingOptions()
            pairing.vocab_tree_path = str(vocab)
            call = pycolmap.match_vocabtree

        def work(token):
            call(self.db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu, cancellation_token=token)

        _run_with_progress(work, _count_rows(self.db, "matches"), f"matching ({m})", total, "pair", self.out)
        db = pycolmap.Database.open(self.db)
        try:
            matched, verified = db.num_matched_image_pairs(), db.num_verified_image_pairs()
        finally:
            db.close()
        if verified == 0:
            raise DatasetError(
                f"{self.photos}: no two photos could be matched ({matched} pairs tried, none verified); "
                + ("the photos must overlap (each part of the scene in several photos)" if m == "exhaustive" else "try --matcher exhaustive, and check that the photos overlap")
            )
        return f"{m}, {verified} of {matched} pairs verified"

    def mapping(self, names: list[str]) -> str:
        import pycolmap

        tmp = self.work / "sparse.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = self.o.num_threads
        options.random_seed = self.o.seed
        options.ba_global_function_tolerance = 1e-6  # as the original convert.py: faster global BA, same models
        registered = [0]

        def initial():
            registered[0] += 2

        def next_image():
            registered[0] += 1

        def work(token):
            return pycolmap.incremental_mapping(self.db, self.photos, tmp, options, initial_image_pair_callback=initial,
                                                next_image_callback=next_image, cancellation_token=token)

        models = _run_with_progress(work, lambda: registered[0], "mapping", len(names), "image", self.out) or {}
        if not models:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(
                f"{self.photos}: the reconstruction registered none of the {len(names)} photos (no initial pair with enough "
                "overlap and parallax); take photos that overlap more and move between shots, or try --matcher exhaustive"
            )
        ordered = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
        shutil.rmtree(self.sparse, ignore_errors=True)
        for k, rec in enumerate(ordered):
            (self.sparse / str(k)).mkdir(parents=True)
            rec.write(self.sparse / str(k))
        shutil.rmtree(tmp, ignore_errors=True)
        best = ordered[0]
        others = f"; {len(ordered) - 1} smaller model(s) in {self.sparse} ({', '.join(str(r.num_reg_images()) for r in ordered[1:])} images)" if len(ordered) > 1 else ""
        return f"{best.num_reg_images()} of {len(names)} photos registered, {best.num_points3D()} points{others}"

    def undistortion(self) -> str:
        import pycolmap

        tmp = self.work / "undistorted.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model = self.sparse / "0"
        n = pycolmap.Reconstruction(model).num_reg_images()
        options = pycolmap.UndistortCameraOptions()

        def work(token):
            pycolmap.undistort_images(tmp, model, self.photos, output_type="COLMAP", undistort_options=options,
                                      jpeg_quality=self.o.jpeg_quality, num_threads=self.o.num_threads, cancellation_token=token)

        _run_with_progress(work, _count_files(tmp / "images"), "undistortion", n, "image", self.out)
        # undistort_images writes sparse/*.bin (no 0/) beside images/ and stereo/: move what 3DGS reads into place.
        for d in [self.scene / "images", self.scene / "sparse"] + self._resized_dirs():
            shutil.rmtree(d, ignore_errors=True)
        (self.scene / "sparse").mkdir(parents=True)
        os.replace(tmp / "sparse", self.scene / "sparse" / "0")
        os.replace(tmp / "images", self.scene / "images")
        shutil.rmtree(tmp, ignore_errors=True)
        return f"{n} images -> {self.scene / 'images'}, PINHOLE model -> {self.scene / 'sparse' / '0'}"

    def _resized_dirs(self) -> list[Path]:
        return sorted(p for p in self.scene.glob("images_*") if p.is_dir() and p.name[len("images_"):].isdigit())

    def resize(self) -> str:
        from ..progress import progress_bar

        src = self.scene / "images"
        names, _ = find_photos(src)
        if not self.o.resize:
            return "none asked"
        with progress_bar("resize", len(names) * len(self.o.resize), "image", self.out) as bar:
            for f in self.o.resize:
                tmp = self.scene / f"images_{f}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                for name in names:
                    _write_resized(src / name, tmp / name, f, self.o.jpeg_quality)
                    bar.advance()
                final = self.scene / f"images_{f}"
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        return ", ".join(f"images_{f}" for f in self.o.resize)

    # -- the pipeline -------------------------------------------------------------------------------

    def run(self, force: bool, redo: Optional[str], verbose: bool) -> ConvertResult:
        import pycolmap

        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        # COLMAP's own log goes to distorted/logs/; the terminal shows our progress and errors only.
        pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(self.work / "logs" / "colmap-"))
        pycolmap.logging.alsologtostderr = bool(verbose)  # pycolmap's default is True

        names, info = self.read_photos()
        state = _read_state(self.state_path)
        if state is not None and not _same(Path(state["photos"]), self.photos):
            state = None  # another photo folder: nothing recorded applies
        if state is None or force:
            state = {"version": STATE_VERSION, "photos": str(self.photos.resolve()), "stages": {}}
        stages = state["stages"]

        photo_list = []
        for n in names:
            st = (self.photos / n).stat()
            photo_list.append([n, st.st_size, st.st_mtime_ns])
        o = self.o
        inputs = {
            "features": {"photos": photo_list, "camera_model": o.camera_model, "camera_mode": o.camera_mode,
                         "max_image_size": o.max_image_size, "max_num_features": o.max_num_features},
            "matching": {"matcher": self.matcher(len(names)), "overlap": o.sequential_overlap, "vocab_tree": o.vocab_tree},
            "mapping": {"seed": o.seed},
            "undistortion": {"jpeg_quality": o.jpeg_quality},
            "resize": {"factors": sorted(o.resize), "jpeg_quality": o.jpeg_quality},
        }
        outputs = {
            "features": lambda: self.db.is_file(),
            "matching": lambda: self.db.is_file(),
            "mapping": lambda: (self.sparse / "0" / "cameras.bin").is_file(),
            "undistortion": lambda: (self.scene / "images").is_dir() and (self.scene / "sparse" / "0" / "cameras.bin").is_file(),
            "resize": lambda: all((self.scene / f"images_{f}").is_dir() for f in o.resize),
        }
        run_stage = {
            "features": lambda: self.features(names, info),
            "matching": lambda: self.matching(len(names)),
            "mapping": lambda: self.mapping(names),
            "undistortion": self.undistortion,
            "resize": self.resize,
        }
        previous, redoing, ran = "", False, []
        for i, stage in enumerate(STAGES):
            key = _key(previous, inputs[stage])
            previous = key
            rec = stages.get(stage)
            redoing = redoing or redo == stage or rec is None or rec.get("key") != key or not outputs[stage]()
            head = f"[{i + 1}/{len(STAGES)}] {stage}"
            if not redoing:
                self.say(f"{head}: done in an earlier run ({rec['seconds']:.1f} s: {rec['note']}); skipped (--redo {stage} runs it again)")
            else:
                ran.append(stage)
                self.run_stage(stage, key, run_stage[stage], head, state)
            if stage == "mapping":
                # Not part of the stage: a model kept by an earlier run is checked against this run's
                # --min_registered, and a failed check does not cost the mapping again.
                self.check_registered(names)
        result = self.summary(names, {s: stages[s]["seconds"] for s in STAGES}, ran)
        state["summary"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        _write_state(self.state_path, state)
        return result

    def run_stage(self, stage: str, key: str, work: Callable[[], str], head: str, state: dict) -> None:
        """Run one stage, recording it in convert.json once (and only once) it has finished."""
        stages = state["stages"]
        for later in STAGES[STAGES.index(stage):]:
            stages.pop(later, None)  # a stage that runs again invalidates what came after it
        _write_state(self.state_path, state)
        self.say(head)
        t0 = time.perf_counter()
        note = work()
        seconds = time.perf_counter() - t0
        stages[stage] = {"key": key, "seconds": round(seconds, 3), "note": note}
        _write_state(self.state_path, state)
        self.say(f"{head}: {note} ({seconds:.1f} s)")

    def check_registered(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(registered, left out) of the model in distorted/sparse/0; an error when too few are registered."""
        import pycolmap

        rec = pycolmap.Reconstruction(self.sparse / "0")
        registered = sorted(im.name for im in rec.images.values() if im.has_pose)
        left_out = sorted(set(names) - set(registered))
        (self.work / "left_out.txt").write_text("".join(n + "\n" for n in left_out))
        need = max(2, math.ceil(self.o.min_registered * len(names)))
        if len(registered) < need:
            tries = ["take more overlapping photos of the left-out parts"]
            if self.o.camera_model != "SIMPLE_RADIAL":
                tries.append("try --camera_model SIMPLE_RADIAL")
            if self.matcher(len(names)) != "exhaustive":
                tries.append("try --matcher exhaustive")
            tries.append(f"accept it with --min_registered {math.floor(100 * len(registered) / len(names)) / 100:.2f}")
            raise DatasetError(
                f"{self.sparse / '0'}: the reconstruction registered only {len(registered)} of {len(names)} photos "
                f"(left out: {_names(left_out)}; all listed in {self.work / 'left_out.txt'}); {', '.join(tries[:-1])}, or {tries[-1]}"
            )
        return registered, left_out

    def summary(self, names: list[str], seconds: dict[str, float], ran: list[str]) -> ConvertResult:
        import pycolmap

        from .colmap import load_colmap

        registered, left_out = self.check_registered(names)
        rec = pycolmap.Reconstruction(self.scene / "sparse" / "0")
        others = sorted((p for p in self.sparse.iterdir() if p.is_dir() and p.name.isdigit() and p.name != "0"), key=lambda p: int(p.name))
        other_counts = [pycolmap.Reconstruction(p).num_reg_images() for p in others]
        # The scene must be what main.py fit reads as it is: parse it with the trainer's own parser.
        load_colmap(self.scene)
        return ConvertResult(
            scene=self.scene, photos=self.photos, num_photos=len(names), registered=registered, left_out=left_out,
            num_points=rec.num_points3D(), mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
            mean_track_length=float(rec.compute_mean_track_length()), num_cameras=rec.num_cameras(),
            seconds=seconds, ran=ran, other_models=other_counts,
        )


def _names(names: list[str], at_most: int = 8) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more: {_names(names[1:])})" if len(names) > 1 else ""


def _write_resized(src: Path, dst: Path, factor: int, quality: int) -> None:
    """Down-scale edge to edge to round(size / factor) (what the trainer expects of images_N)."""
    with Image.open(src) as im:
        im.load()
        w, h = im.size
        small = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": quality} if dst.suffix.lower() in (".jpg", ".jpeg") else {}
    small.save(dst, **kw)


def check_options(o: ConvertOptions) -> None:
    """One-line errors for option values pycolmap would reject less clearly."""
    if o.matcher not in MATCHERS:
        raise DatasetError(f"--matcher {o.matcher}: unknown; choose one of {', '.join(MATCHERS)}")
    if o.camera_mode not in CAMERA_MODES:
        raise DatasetError(f"--camera_mode {o.camera_mode}: unknown; choose one of {', '.join(CAMERA_MODES)}")
    if o.camera_model not in CAMERA_MODELS:
        raise DatasetError(f"--camera_model {o.camera_model}: unknown; choose one of {', '.join(CAMERA_MODELS)}")
    bad = [f for f in o.resize if f < 2]
    if bad:
        raise DatasetError(f"--resize {bad[0]}: factors must be integers >= 2 (e.g. --resize 2 4 8)")
    if not 0.0 <= o.min_registered <= 1.0:
        raise DatasetError(f"--min_registered {o.min_registered}: must be a fraction in 0..1")
    if o.max_image_size < 16:
        raise DatasetError(f"--max_image_size {o.max_image_size}: must be at least 16 pixels")


def convert(source, output=None, options: ConvertOptions = ConvertOptions(), *, force: bool = False,
            redo: Optional[str] = None, verbose: bool = False, out=None) -> ConvertResult:
    """Run (or continue) the conversion of SOURCE's photos into a scene; see the module doc.

    force: redo every stage (and replace images/ and sparse/ not written by convert.py);
    redo: redo this stage and the ones after it. Raises DatasetError (one line) on bad input.
    """
    from ..progress import console

    check_options(options)
    if redo is not None and redo not in STAGES:
        raise DatasetError(f"--redo {redo}: unknown stage; choose one of {', '.join(STAGES)}")
    photos, scene = resolve_paths(Path(source), Path(output) if output is not None else None)
    if not force and _read_state(scene / "distorted" / STATE_FILE) is None:
        theirs = [p for p in (scene / "images", scene / "sparse") if p.exists()]
        if theirs:
            raise DatasetError(f"{theirs[0]}: already exists and was not written by convert.py; choose another -o, or pass --force to replace {' and '.join(p.name for p in theirs)}")
    return _Converter(photos, scene, options, out or console()).run(force, redo, verbose)




def print_summary(r: ConvertResult, out=None) -> None:
    """The closing lines of convert.py: what was registered, how well, how long, and the next command."""
    from ..progress import console

    out = out or console()
    stages = ", ".join(f"{s} {r.seconds[s]:.1f} s" + ("" if s in r.ran else " (earlier run)") for s in STAGES)
    out.print(f"registered {len(r.registered)} of {r.num_photos} photos, {r.num_points:,} points, "
              f"mean reprojection error {r.mean_reprojection_error:.2f} px, mean track length {r.mean_track_length:.1f}, "
              f"{r.num_cameras} camera{'s' if r.num_cameras != 1 else ''}")
    if r.left_out:
        out.print(f"left out (not registered): {_names(r.left_out)}")
    if r.other_models:
        out.print(f"smaller separate models (not used): {', '.join(str(n) for n in r.other_models)} images, in {r.scene / 'distorted' / 'sparse'}")
    out.print(f"time: {stages}")
    out.print(f"scene: {r.scene}  ->  python main.py fit --data.path {r.scene}")


__all__ = ["convert", "print_summary", "ConvertOptions", "ConvertResult", "STAGES", "MATCHERS", "CAMERA_MODES", "CAMERA_MODELS", "resolve_paths", "find_photos", "check_options"]
