"""tgfr.data: synthetic set, captions, quality levels, dataset, protocols, readers."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tgfr.data import (
    ATTRIBUTE_VALUES,
    QUALITY_LEVELS,
    FaceCaptionDataset,
    FaceRecord,
    IdentityProfile,
    SyntheticConfig,
    build_synthetic_splits,
    celebahq_identities,
    collate_face_captions,
    degradation_at,
    degrade,
    generate_synthetic,
    identification_split,
    load_real_captions,
    make_caption,
    read_celeba_dialog,
    read_face2text,
    read_mmcelebahq,
    render_face,
    sample_identity,
    sample_variation,
    split_identities,
    verification_pairs,
)
from tgfr.data.captions import TEMPLATE_PHRASES
from tgfr.evaluation.metrics import min_impostors_for_far

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = SyntheticConfig(num_identities=10, images_per_identity=4, image_size=32, captions_per_image=3, seed=3)


@pytest.fixture(scope="module")
def small_faces():
    return generate_synthetic(SMALL)


def _psnr(clean: np.ndarray, degraded: np.ndarray) -> float:
    mse = np.mean((clean.astype(np.float64) - degraded) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# --- synthetic generation -------------------------------------------------------------------

def test_same_seed_gives_identical_images_and_captions(small_faces):
    again = generate_synthetic(SMALL)
    assert np.array_equal(small_faces.images, again.images)
    assert small_faces.captions == again.captions
    assert np.array_equal(small_faces.identities, again.identities)


def test_other_seed_gives_other_people(small_faces):
    other = generate_synthetic(SyntheticConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert not np.array_equal(small_faces.images, other.images)
    assert small_faces.captions != other.captions


def test_growing_the_population_keeps_existing_people(small_faces):
    fewer = generate_synthetic(SyntheticConfig(**{**SMALL.__dict__, "num_identities": 6}))
    assert np.array_equal(fewer.images, small_faces.images[:len(fewer.images)])
    assert fewer.captions == small_faces.captions[:len(fewer.captions)]


def test_photos_of_one_person_vary_and_people_differ(small_faces):
    images = small_faces.images.astype(np.float64).reshape(SMALL.num_identities, SMALL.images_per_identity, -1)
    assert images.std() > 20  # not blank
    within = np.abs(images[:, 0] - images[:, 1]).mean()
    assert within > 1.0  # pose, lighting and background change between photos
    # Identical attributes, different geometry: renders of one variation still differ.
    profile_a, profile_b = sample_identity(0, 0), sample_identity(0, 0)
    variation = sample_variation(profile_a, np.random.default_rng(5))
    assert np.array_equal(render_face(profile_a, variation, 48), render_face(profile_b, variation, 48))
    moved = IdentityProfile(profile_b.identity, profile_b.attributes, np.clip(profile_b.geometry + 0.5, -1, 1),
                            profile_b.colours)
    assert np.abs(render_face(profile_a, variation, 48).astype(int) - render_face(moved, variation, 48)).max() > 50


def test_identity_attributes_are_valid_and_correlated():
    profiles = [sample_identity(11, k) for k in range(400)]
    for profile in profiles:
        for name, value in profile.attributes.items():
            assert value in ATTRIBUTE_VALUES[name], (name, value)
        assert profile.geometry.shape == (16,) and np.all(np.abs(profile.geometry) <= 1)
    women = [p for p in profiles if p.attributes["gender"] == "female"]
    assert 120 < len(women) < 280
    assert all(p.attributes["beard"] == "none" and not p.attributes["moustache"] for p in women)
    assert any(p.attributes["eyeglasses"] for p in profiles) and not all(p.attributes["eyeglasses"] for p in profiles)


def test_cache_round_trip(tmp_path, small_faces):
    first = generate_synthetic(SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tgfr_synthetic_*.npz"))) == 1
    cached = generate_synthetic(SMALL, cache_dir=tmp_path)
    assert np.array_equal(cached.images, small_faces.images) and np.array_equal(first.images, cached.images)
    assert cached.captions == small_faces.captions and cached.attributes == small_faces.attributes


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_identities"):
        SyntheticConfig(num_identities=0)
    with pytest.raises(ValueError, match="split_fractions"):
        SyntheticConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="contradiction_probability"):
        SyntheticConfig(contradiction_probability=1.5)
    with pytest.raises(ValueError, match="split 'valid' gets no identity"):
        split_identities(SyntheticConfig(num_identities=3, split_fractions=(0.8, 0.1, 0.1)))


# --- splits and protocols -------------------------------------------------------------------

def test_splits_have_disjoint_identities_covering_everyone():
    config = SyntheticConfig(num_identities=20, images_per_identity=3, image_size=32, captions_per_image=2, seed=1)
    splits = build_synthetic_splits(config)
    keys = {name: set(dataset.identity_keys) for name, dataset in splits.items()}
    assert keys["train"].isdisjoint(keys["valid"]) and keys["train"].isdisjoint(keys["test"])
    assert keys["valid"].isdisjoint(keys["test"])
    assert set.union(*keys.values()) == set(range(20))
    assert [len(keys[n]) for n in ("train", "valid", "test")] == [12, 2, 6]
    for dataset in splits.values():
        assert len(dataset) == 3 * dataset.num_identities
        assert sorted(set(dataset.labels.tolist())) == list(range(dataset.num_identities))
        assert all(r.identity == dataset.identity_keys[label] for r, label in zip(dataset.records, dataset.labels))


def test_verification_pairs_are_all_pairs_split_by_identity():
    labels = np.random.default_rng(0).integers(0, 7, size=40)
    pairs = verification_pairs(labels)
    counts = np.bincount(labels)
    assert pairs.num_genuine == int((counts * (counts - 1) // 2).sum())
    assert pairs.num_genuine + pairs.num_impostor == 40 * 39 // 2
    assert np.all(pairs.pairs[:, 0] < pairs.pairs[:, 1])
    assert np.array_equal(labels[pairs.pairs[:, 0]] == labels[pairs.pairs[:, 1]], pairs.genuine)
    sampled = verification_pairs(labels, max_impostors=100, seed=1)
    assert sampled.num_impostor == 100 and sampled.num_genuine == pairs.num_genuine
    assert np.array_equal(labels[sampled.pairs[:, 0]] == labels[sampled.pairs[:, 1]], sampled.genuine)
    assert len({tuple(p) for p in sampled.pairs}) == len(sampled.pairs)


def test_default_test_split_resolves_far_1e_3():
    config = SyntheticConfig()  # labels only: the split sizes do not need rendering
    test_identities = split_identities(config)["test"]
    pairs = verification_pairs(np.repeat(np.arange(test_identities.size), config.images_per_identity))
    assert pairs.num_impostor >= min_impostors_for_far(1e-3)
    assert pairs.lowest_resolvable_far() < 1e-3


def test_protocols_reject_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        verification_pairs(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="genuine"):
        verification_pairs(np.arange(5))
    with pytest.raises(ValueError, match="no probes"):
        identification_split(np.arange(5))


def test_identification_split_one_gallery_photo_per_identity():
    labels = np.random.default_rng(2).permutation(np.repeat(np.arange(9), 5))
    split = identification_split(labels, seed=4)
    assert np.array_equal(labels[split.gallery], np.arange(9))
    assert np.intersect1d(split.gallery, split.probes).size == 0
    assert np.array_equal(np.sort(np.concatenate([split.gallery, split.probes])), np.arange(45))
    assert not np.array_equal(split.gallery, identification_split(labels, seed=5).gallery)


# --- quality levels -------------------------------------------------------------------------

def test_quality_levels_degrade_monotonically(small_faces):
    psnr = {level: [] for level in QUALITY_LEVELS[1:]}
    for index, image in enumerate(small_faces.images[:16]):
        assert np.array_equal(degrade(image, "normal", np.random.default_rng(index)), image)
        for level in psnr:
            psnr[level].append(_psnr(image, degrade(image, level, np.random.default_rng(index))))
    means = [np.mean(psnr[level]) for level in QUALITY_LEVELS[1:]]
    assert means[0] > means[1] + 1.0 > means[2] + 2.0, means


def _blocks(image: np.ndarray, block: int) -> np.ndarray:
    """Mean colour of each block x block tile, expanded back to the image size."""
    h, w, _ = image.shape
    means = image.reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))
    return np.repeat(np.repeat(means, block, axis=0), block, axis=1)


def test_very_bad_keeps_coarse_colour_but_not_detail():
    config = SyntheticConfig(num_identities=4, images_per_identity=2, image_size=112, captions_per_image=1)
    images = generate_synthetic(config).images.astype(np.float64)
    detail_kept = {level: [] for level in QUALITY_LEVELS[1:]}
    coarse_kept = []
    for index, clean in enumerate(images):
        clean_detail = clean - _blocks(clean, 4)  # landmark-scale structure
        for level in detail_kept:
            degraded = degrade(clean.astype(np.uint8), level, np.random.default_rng(index)).astype(np.float64)
            detail = degraded - _blocks(degraded, 4)
            detail_kept[level].append(np.corrcoef(clean_detail.ravel(), detail.ravel())[0, 1])
            if level == "very_bad":  # colours of 28-pixel tiles (hair, skin, background)
                coarse_kept.append(np.corrcoef(_blocks(clean, 28).ravel(), _blocks(degraded, 28).ravel())[0, 1])
    kept = [np.mean(detail_kept[level]) for level in QUALITY_LEVELS[1:]]
    assert kept[0] > kept[1] > kept[2] and kept[2] < 0.3, kept
    assert np.mean(coarse_kept) > 0.8 and min(coarse_kept) > 0.6, coarse_kept


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def test_a_level_takes_the_same_share_of_detail_at_every_image_size():
    """A 96-pixel face degraded and then shown at 32 pixels looks like its 32-pixel version degraded:
    blur, the lost resolution, the noise grain and JPEG's blocks all scale with the image (per-pixel
    noise, a fixed resolution floor and 8x8 blocks at the native size made them differ by 8-13 grey levels)."""
    config = SyntheticConfig(num_identities=4, images_per_identity=2, image_size=96, captions_per_image=1)
    for level in QUALITY_LEVELS[1:]:
        gaps, changes = [], []
        for index, large in enumerate(generate_synthetic(config).images):
            small = _resized(large, 32)
            degraded = degrade(small, level, np.random.default_rng(index)).astype(np.float64)
            shown_small = _resized(degrade(large, level, np.random.default_rng(index)), 32)
            gaps.append(np.abs(shown_small - degraded).mean())
            changes.append(np.abs(small - degraded).mean())
        assert np.mean(gaps) < 3.0 and np.mean(changes) > 2 * np.mean(gaps), (level, gaps, changes)


def test_degrade_is_reproducible_and_checks_input(small_faces):
    image = small_faces.images[0]
    assert np.array_equal(degrade(image, "bad", np.random.default_rng(9)), degrade(image, "bad", np.random.default_rng(9)))
    assert not np.array_equal(degrade(image, "bad", np.random.default_rng(9)), degrade(image, "bad", np.random.default_rng(10)))
    with pytest.raises(ValueError, match="quality level"):
        degrade(image, "awful", np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        degrade(image.astype(np.float32), "poor", np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity must be in"):
        degradation_at(1.5)


# --- captions -------------------------------------------------------------------------------

def _many_captions(style, mention, contradiction, count=300, seed=0):
    captions = []
    for k in range(count):
        profile = sample_identity(seed, k)
        photo = {"smiling": bool(k % 2), "mouth_open": bool(k % 3 == 0)}
        caption = make_caption(profile.attributes, photo, style, np.random.default_rng([seed, k]), mention, contradiction)
        captions.append((profile.attributes | photo, caption))
    return captions


def test_template_captions_state_true_attributes_in_their_words():
    for truth, caption in _many_captions("template", 0.5, 0.0):
        assert len(caption.facts) >= 2
        for fact in caption.facts:
            assert fact.truthful and truth[fact.attribute] == fact.value
            assert TEMPLATE_PHRASES[fact.attribute][fact.value][1] in caption.text
        pronoun = "He" if truth["gender"] == "male" else "She"
        other = "She" if pronoun == "He" else "He"
        assert f"{other} " not in caption.text


def test_free_captions_name_hair_colour_and_gender():
    named = 0
    for truth, caption in _many_captions("free", 0.6, 0.0):
        said = {f.attribute: f.value for f in caption.facts}
        assert caption.text.startswith(("A ", "An ")) and caption.text.endswith(".")
        noun = ("man", "guy") if truth["gender"] == "male" else ("woman", "lady")
        assert any(f" {n}" in caption.text for n in noun)
        if "hair_color" in said:
            named += 1
            words = {"blond": ("blond", "blonde"), "gray": ("gray", "grey", "white"), "black": ("black", "dark"),
                     "red": ("red", "ginger"), "brown": ("brown",)}[said["hair_color"]]
            assert any(f"{w} hair" in caption.text for w in words), caption.text
    assert named > 100


def test_caption_noise_rates_match_configuration():
    # Attributes worded for every value: each considered one is stated, so rates are exact.
    full = ("hair_color", "face_shape", "eye_color", "skin_tone", "age", "lip_size", "nose_size", "eyebrows")
    for mention, contradiction in ((0.3, 0.0), (0.5, 0.2)):
        stated = wrong = 0
        for _, caption in _many_captions("template", mention, contradiction, count=600, seed=1):
            facts = [f for f in caption.facts if f.attribute in full]
            stated += len(facts)
            wrong += sum(not f.truthful for f in facts)
        considered = 600 * len(full)
        # Captions below two facts get topped up with true ones, so mentions run a bit high.
        assert mention - 0.03 < stated / considered < mention + 0.08, (mention, stated / considered)
        assert abs(wrong / stated - contradiction) < 0.04, (contradiction, wrong / stated)


def test_captions_identify_people():
    from sklearn.feature_extraction.text import TfidfVectorizer

    faces = generate_synthetic(SyntheticConfig(num_identities=30, images_per_identity=4, image_size=16,
                                               captions_per_image=4, seed=8))
    labels = faces.identities
    split = identification_split(labels, seed=0)
    vectorizer = TfidfVectorizer().fit([c for captions in faces.captions for c in captions])
    gallery = vectorizer.transform([" ".join(faces.captions[i]) for i in split.gallery])
    probes = vectorizer.transform([faces.captions[i][0] for i in split.probes])
    predicted = np.asarray((probes @ gallery.T).argmax(axis=1)).ravel()
    rank1 = float(np.mean(predicted == labels[split.probes]))
    assert rank1 > 5.0 / 30, rank1  # one caption against one photo's captions; chance is 1/30


def test_real_style_caption_lengths():
    lengths = {style: np.median([len(c.text.split()) for _, c in _many_captions(style, 0.4, 0.05)])
               for style in ("template", "free")}
    assert 8 <= lengths["template"] <= 25 and 8 <= lengths["free"] <= 30, lengths


def test_make_caption_rejects_bad_arguments():
    attributes = sample_identity(0, 0).attributes
    with pytest.raises(ValueError, match="style"):
        make_caption(attributes, {}, "poem", np.random.default_rng(0))
    with pytest.raises(ValueError, match="mention_probability"):
        make_caption(attributes, {}, "free", np.random.default_rng(0), mention_probability=-0.1)


# --- dataset --------------------------------------------------------------------------------

def test_dataset_items_and_collate(small_faces):
    dataset = FaceCaptionDataset(small_faces.records(), quality="mixed", seed=5)
    items = [dataset[i] for i in range(len(dataset))]
    for index, item in enumerate(items):
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0
        assert item["identity"] == dataset.labels[index] == index // SMALL.images_per_identity
        assert item["caption"] in item["captions"] and len(item["captions"]) == SMALL.captions_per_image
        assert item["index"] == index
    assert {item["quality"] for item in items} == set(QUALITY_LEVELS)
    batch = collate_face_captions(items[:6])
    assert batch["image"].shape == (6, 3, 32, 32)
    assert batch["identity"].dtype == torch.int64 and batch["identity"].tolist() == [0, 0, 0, 0, 1, 1]
    assert len(batch["caption"]) == len(batch["quality"]) == len(batch["captions"]) == 6
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=collate_face_captions)
    assert torch.equal(next(iter(loader))["image"], torch.stack([item["image"] for item in items[:8]]))


def test_normal_quality_item_is_the_clean_photo(small_faces):
    dataset = FaceCaptionDataset(small_faces.records(), quality="normal", caption_choice="first")
    item = dataset[3]
    expected = torch.from_numpy(small_faces.images[3].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    assert torch.allclose(item["image"], expected)
    assert item["caption"] == small_faces.captions[3][0]


def test_dataset_epochs_and_quality_views(small_faces):
    dataset = FaceCaptionDataset(small_faces.records(), quality="mixed", seed=1)
    before = [dataset[i] for i in range(12)]
    assert all(torch.equal(a["image"], dataset[i]["image"]) for i, a in enumerate(before))
    dataset.set_epoch(1)
    after = [dataset[i] for i in range(12)]
    assert [a["quality"] for a in before] != [a["quality"] for a in after] or \
        [a["caption"] for a in before] != [a["caption"] for a in after]
    bad = dataset.with_quality("very_bad")
    assert bad.identity_keys == dataset.identity_keys and {bad[i]["quality"] for i in range(4)} == {"very_bad"}
    probes = dataset.subset([5, 9])
    assert probes.labels.tolist() == dataset.labels[[5, 9]].tolist()


def test_dataset_rejects_bad_arguments(small_faces):
    records = small_faces.records()
    with pytest.raises(ValueError, match="quality level"):
        FaceCaptionDataset(records, quality="great")
    with pytest.raises(ValueError, match="caption_choice"):
        FaceCaptionDataset(records, caption_choice="longest")
    with pytest.raises(ValueError, match="identity_keys"):
        FaceCaptionDataset(records, identity_keys=[0, 1])
    with pytest.raises(ValueError, match="exactly one of pixels and image_path"):
        FaceRecord(identity=0, captions=("a face",))
    with pytest.raises(ValueError, match="captions"):
        FaceRecord(identity=0, captions=(), image_path="x.jpg")


# --- readers --------------------------------------------------------------------------------

def test_read_mmcelebahq_fixture():
    records = read_mmcelebahq(FIXTURES / "mmcelebahq")
    assert [r.name for r in records] == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg"]
    assert [r.identity for r in records] == [4001, 4001, 4002, 4002, 4003]
    real = load_real_captions("mmcelebahq")
    assert records[0].captions == tuple(real[0]["captions"][:4])
    dataset = FaceCaptionDataset(records, image_size=48, quality="bad")
    item = dataset[2]
    assert item["image"].shape == (3, 48, 48) and item["identity"] == 1 and dataset.num_identities == 3


def test_read_celeba_dialog_fixture_through_celeba_mapping():
    records = read_celeba_dialog(FIXTURES / "celeba_dialog")
    assert [r.identity for r in records] == [4001, 4001, 4002, 4002, 4003]
    assert records[0].captions[0] == load_real_captions("mmcelebahq")[0]["captions"][0]
    assert len(records[0].captions) == 3
    assert len(read_celeba_dialog(FIXTURES / "celeba_dialog", attribute_captions=False)[0].captions) == 1
    by_mapping = celebahq_identities(FIXTURES / "celeba_dialog")
    assert by_mapping == celebahq_identities(FIXTURES / "mmcelebahq")


def test_read_face2text_fixture_and_variants(tmp_path):
    records = read_face2text(FIXTURES / "face2text")
    assert [r.name for r in records] == ["000112.jpg", "000340.jpg", "001024.jpg", "010501.jpg"]
    assert [r.identity for r in records] == [21, 21, 38, 38]
    assert records[0].captions == tuple(load_real_captions("face2text")[0]["captions"])
    # The same descriptions as CSV rows and as a name -> descriptions object.
    entries = json.loads((FIXTURES / "face2text" / "raw.json").read_text())
    csv_file = tmp_path / "face2text.csv"
    with open(csv_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "description"])
        for entry in entries:
            writer.writerows([entry["image"], d["text"]] for d in entry["descriptions"])
    json_file = tmp_path / "by_name.json"
    json_file.write_text(json.dumps({e["image"]: [d["text"] for d in e["descriptions"]] for e in entries}))
    for annotations in (csv_file, json_file):
        variant = read_face2text(FIXTURES / "face2text", annotations=annotations)
        assert [(r.name, r.identity, r.captions) for r in variant] == [(r.name, r.identity, r.captions) for r in records]


def test_readers_strict_and_lenient_about_missing_files(tmp_path):
    root = tmp_path / "mmcelebahq"
    shutil.copytree(FIXTURES / "mmcelebahq", root)
    (root / "CelebA-HQ-img" / "3.jpg").unlink()
    with pytest.raises(ValueError, match="no image file for '3'"):
        read_mmcelebahq(root)
    assert [r.name for r in read_mmcelebahq(root, strict=False)] == ["0.jpg", "1.jpg", "2.jpg", "4.jpg"]
    (root / "CelebA-HQ-identity.txt").unlink()
    with pytest.raises(FileNotFoundError, match="CelebA-HQ-identity.txt"):
        read_mmcelebahq(root)
    with pytest.raises(FileNotFoundError, match="Face2Text descriptions"):
        read_face2text(tmp_path)


def test_shipped_real_captions():
    entries = load_real_captions()
    assert {e["identity"].split(":")[0] for e in entries} == {"face2text", "mmcelebahq"}
    assert len(load_real_captions("face2text")) + len(load_real_captions("mmcelebahq")) == len(entries)
    assert all(entry["captions"] and all(c.strip() for c in entry["captions"]) for entry in entries)
    with pytest.raises(ValueError, match="corpus"):
        load_real_captions("coco")
