"""A built-in synthetic COCO-keypoint dataset: articulated people on textured backgrounds.

``python -m psapose.data.synthetic OUT --images N --seed S`` (or
:func:`generate_synthetic_coco`) writes a dataset in the official COCO layout::

    OUT/annotations/person_keypoints_{train,val}2017.json
    OUT/images/{train,val}2017/000000000001.jpg ...
    OUT/person_detection_results/synthetic_val2017_detections.json

Each image holds 1-4 people: a 3-D kinematic skeleton (torso, neck, head with
nose, eyes and ears, two-segment arms and legs, hands and feet) in a random pose
(standing, walking, running, arms raised, waving, reaching, squatting, sitting,
bending, kicking, ...), seen from a random direction (frontal, three-quarter,
profile, from behind), orthographically projected and drawn back to front as
shaded, tapered, anti-aliased limbs, a torso and a shaded ellipsoid head with
hair and face features. Backgrounds are gradients, smooth noise, shapes and
lines with blur; opaque objects are drawn over some people.

**Left and right.** Every arm and leg segment carries contrasting bands slanted
45 degrees to its axis: one way on the person's left limbs, the mirror way on
the right ones (a left- and a right-handed helix). The slant relative to the
limb axis does not change with the view or an in-plane rotation, so the sides
can be told apart in every pose and view (besides the face, hair and which side
is drawn in front); and, unlike a marking on one side only, the cue survives
horizontal-flip augmentation, which mirrors the bands exactly as it swaps the
left and right labels.

Labels are exact by construction: every pixel records which body part (or
occluder) was drawn there last, so a keypoint is ``v=2`` when the pixel under it
shows a body part it belongs to, ``v=1`` when it lies in the image but is covered
(by an occluder, another person, the person's own torso or limbs, or the head
itself for the far ear/eye in profile and the face seen from behind), and ``v=0``
with ``x=y=0`` outside the image. ``bbox``, ``area`` and ``segmentation`` come from
the person's visible pixels. Keypoints are in pixels with pixel centres at
integer coordinates (COCO's convention), rounded to 0.01.

Image ``i`` of a split is a pure function of ``(seed, split, i, image_size)``
(NumPy ``SeedSequence(seed, spawn_key=(split, i))``), image ids are ``i + 1``
(train) and ``1_000_001 + i`` (val), JSON has a fixed key order and no
timestamps: the same arguments give byte-identical files.

The package: :mod:`.pose` (keypoints, skeleton, pose and view sampling), :mod:`.person`
(size, place, clothes and parts of one person; the difficulty presets), :mod:`.raster`
(drawing), :mod:`.scene` (background, occluders, one image and its labels) and
:mod:`.writer` (the files, the detections, the command line).
"""

from .person import DIFFICULTIES, Difficulty, difficulty_preset
from .scene import (
    DEFAULT_IMAGE_SIZE,
    MIN_AREA,
    SPLITS,
    SyntheticImage,
    image_id_for,
    render_synthetic_image,
)
from .writer import (
    DETECTION_FILE,
    GENERATOR_VERSION,
    JPEG_QUALITY,
    generate_synthetic_coco,
    main,
)

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DETECTION_FILE",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MIN_AREA",
    "SPLITS",
    "Difficulty",
    "SyntheticImage",
    "difficulty_preset",
    "generate_synthetic_coco",
    "image_id_for",
    "main",
    "render_synthetic_image",
]
