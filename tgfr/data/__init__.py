"""Face-caption data: the embedded synthetic set, image-quality levels, real-dataset readers.

Embedded synthetic set (no download; see :mod:`tgfr.data.synthetic`)::

    from tgfr.data import SyntheticConfig, build_synthetic_splits, collate_face_captions
    splits = build_synthetic_splits(SyntheticConfig(num_identities=200, images_per_identity=10,
                                                    image_size=64, captions_per_image=5, seed=0),
                                    cache_dir="~/.cache/tgfr")          # cache_dir optional
    train = splits["train"].with_quality("mixed")   # or keep "normal"
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True,
                                         collate_fn=collate_face_captions)
    batch = next(iter(loader))
    # batch["image"]    float32 [B, 3, H, W] in [-1, 1]
    # batch["identity"] int64 [B], labels 0..train.num_identities-1 (per split)
    # batch["caption"]  list of B str (one caption drawn per item; "captions": all of them)
    # batch["quality"]  list of B str from QUALITY_LEVELS;  batch["index"] int64 [B]
    # call train.set_epoch(e) each epoch for fresh captions/degradations.

Evaluation protocols on the test split (:mod:`tgfr.data.protocols`)::

    test = splits["test"]
    pairs = verification_pairs(test.labels)     # all genuine + all impostor pairs (i < j)
    split = identification_split(test.labels)   # one gallery photo per identity, rest probes
    gallery = test.subset(split.gallery)                        # normal quality
    for level in QUALITY_LEVELS:
        probes = test.subset(split.probes).with_quality(level)  # same labels as gallery
        degraded_test = test.with_quality(level)                # for verification at `level`

Quality levels (:mod:`tgfr.data.quality`): ``QUALITY_LEVELS = ("normal", "poor", "bad",
"very_bad")``; ``degrade(image_uint8_hwc, level, rng)`` applies a colour cast and contrast
loss, blurs, down/up-samples, adds noise and JPEG-compresses, in a 112-pixel reference frame
so that every strength scales with the image. A dataset degrades each item on access,
reproducibly per (seed, epoch, index, level). The levels are calibrated so that the frozen
image-only face encoder keeps about the share of its normal-quality TAR@FAR=1e-3 that the
paper's image-only encoder keeps (``benchmarks/QUALITY_CALIBRATION.md``).

Real datasets (:mod:`tgfr.data.readers`; never downloaded, read from a root you give):
``read_mmcelebahq(root)``, ``read_face2text(root)``, ``read_celeba_dialog(root)`` return
lists of :class:`FaceRecord` for :class:`FaceCaptionDataset` (give ``image_size``, e.g. 112).
By name (:mod:`tgfr.data.sources`): ``read_dataset(name, root, skip_bad)`` reads a real tree and
opens every image once (bad input is a ``DataError`` naming the file, or skipped and listed);
``split_dataset(name, records, root, seed)`` gives the paper's split, or a seeded
identity-disjoint one on a partial tree.
``load_real_captions()`` returns the sample of real Face2Text and Multi-Modal-CelebA-HQ
captions shipped with the package (tokenizer and text-encoder tests, length statistics).
"""
from .captions import CAPTION_STYLES, Caption, CaptionFact, make_caption
from .dataset import FaceCaptionDataset, FaceRecord, collate_face_captions, image_to_tensor
from .identities import ATTRIBUTE_VALUES, GEOMETRY_NAMES, IdentityProfile, sample_identity
from .protocols import IdentificationSplit, VerificationPairs, identification_split, verification_pairs
from .quality import QUALITY_LEVELS, degradation_at, degrade
from .readers import celebahq_identities, read_celeba_dialog, read_celeba_identities, read_face2text, read_mmcelebahq
from .real_captions import REAL_CAPTION_CORPORA, load_real_captions
from .render import ImageVariation, render_face, sample_variation
from .sources import DATASETS, DataError, DataSplit, read_dataset, split_dataset
from .synthetic import (
    SyntheticConfig,
    SyntheticData,
    SyntheticFaces,
    build_synthetic_splits,
    generate_synthetic,
    split_identities,
)

__all__ = [
    "ATTRIBUTE_VALUES", "CAPTION_STYLES", "DATASETS", "DataError", "DataSplit", "read_dataset", "split_dataset", "GEOMETRY_NAMES", "QUALITY_LEVELS", "Caption", "CaptionFact",
    "FaceCaptionDataset", "FaceRecord", "IdentificationSplit", "IdentityProfile", "ImageVariation",
    "REAL_CAPTION_CORPORA", "SyntheticConfig", "SyntheticData", "SyntheticFaces", "VerificationPairs", "build_synthetic_splits",
    "celebahq_identities", "collate_face_captions", "degradation_at", "degrade", "generate_synthetic", "identification_split",
    "image_to_tensor", "load_real_captions", "make_caption", "read_celeba_dialog",
    "read_celeba_identities", "read_face2text", "read_mmcelebahq", "render_face", "sample_identity",
    "sample_variation", "split_identities", "verification_pairs",
]
