import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from sda_lib.method.export import export_baseline
from sda_lib.method.extractors import CLIPExtractor, MiniLMEfficientNetExtractor, efficientnet_pixels, tiny_clip
from sda_lib.recsys import row_labels

TEXTS = ["a red running shoe", "blue socks", "kitchen knife set " * 40]  # the last is longer than CLIP's context


def noise_images(n, size=(48, 40)):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """The "tiny" random CLIP saved as a model folder, as a downloaded checkpoint is laid out."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    for part in tiny_clip(seed=0):
        part.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pretrained():
    return MiniLMEfficientNetExtractor(batch_size=2, device="cpu")


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_clip_from_a_folder_gives_the_projection_head_outputs(clip_folder):
    extractor = CLIPExtractor(str(clip_folder), batch_size=2, device="cpu")
    images = noise_images(3)
    text, image = extractor.embed_texts(TEXTS, progress=False), extractor.embed_images(images, progress=False)
    assert text.shape == image.shape == (3, 16) and text.dtype == image.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1, atol=1e-6)

    # Round trip: the same numbers as the saved model run by hand.
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokens = CLIPTokenizer.from_pretrained(clip_folder)(TEXTS[:2], padding=True, return_tensors="pt")
    processor = CLIPImageProcessorPil.from_pretrained(clip_folder)
    with torch.inference_mode():
        want_text = model.get_text_features(**tokens).pooler_output
        want_image = model.get_image_features(**processor(images[:1], return_tensors="pt")).pooler_output
    np.testing.assert_allclose(text[:2], torch.nn.functional.normalize(want_text).numpy(), atol=1e-5)
    np.testing.assert_allclose(image[:1], torch.nn.functional.normalize(want_image).numpy(), atol=1e-5)

    # Unnormalised rows point the same way; a second load in other batches gives the same rows.
    raw = CLIPExtractor(str(clip_folder), batch_size=3, normalize=False, device="cpu")
    raw_text = raw.embed_texts(TEXTS, progress=False)
    np.testing.assert_allclose(raw_text / np.linalg.norm(raw_text, axis=1, keepdims=True), text, atol=1e-5)
    np.testing.assert_allclose(raw_text[:2], want_text.numpy(), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw_text, axis=1), 1)


def test_tiny_clip_preset_is_built_offline_seeded_and_equals_its_saved_folder(clip_folder, toy_tiny, tmp_path):
    """`clip_model="tiny"`: the random CLIP the paper profile's smoke runs use in place of ViT-L/14,
    the same numbers as that model saved and loaded as a folder; another seed, other weights."""
    tiny = CLIPExtractor("tiny", batch_size=2, device="cpu")
    folder = CLIPExtractor(str(clip_folder), batch_size=2, device="cpu")
    assert tiny.id == "clip:tiny-random-seed0" and tiny.text_dim == tiny.image_dim == 16
    images = noise_images(2)
    np.testing.assert_allclose(tiny.embed_texts(TEXTS, progress=False), folder.embed_texts(TEXTS, progress=False))
    np.testing.assert_allclose(tiny.embed_images(images, progress=False), folder.embed_images(images, progress=False))
    other = CLIPExtractor("tiny", device="cpu", seed=1)
    assert other.id == "clip:tiny-random-seed1"
    assert not np.allclose(other.embed_texts(TEXTS[:1], progress=False), tiny.embed_texts(TEXTS[:1], progress=False))
    table = export_baseline("clip", toy_tiny, tmp_path / "clip", model="tiny", progress=False)
    assert table.manifest["model"] == "clip:tiny-random-seed0" and table.split_dims == (16, 16)
    assert row_labels({"clip": table.manifest}) == {"CLIP": "CLIP (tiny)"}
    with pytest.raises(ValueError, match="the paper's is openai/clip-vit-large-patch14"):
        export_baseline("clip", toy_tiny, tmp_path / "none")


def test_bad_sources_and_inputs_are_named(clip_folder, tmp_path):
    with pytest.raises(OSError, match=f"could not load a CLIP model from the folder {tmp_path}"):
        CLIPExtractor(str(tmp_path))  # an empty folder
    extractor = CLIPExtractor(str(clip_folder), device="cpu")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        extractor.embed_texts(["ok", 3])
    with pytest.raises(TypeError, match=r"images\[0\] is ndarray"):
        extractor.embed_images([np.zeros((4, 4, 3))])


def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(pretrained):
    rows = pretrained.embed_texts(
        ["A red running shoe for men", "Men's red sneakers for jogging", "Stainless steel kitchen knife set"],
        progress=False,
    )
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    assert cosine(rows[0], rows[1]) > cosine(rows[0], rows[2]) + 0.3
    again = pretrained.embed_texts(["Men's red sneakers for jogging"], progress=False)
    np.testing.assert_allclose(again[0], rows[1], atol=1e-5)  # deterministic, batch-independent


def test_efficientnet_features_are_the_imagenet_classifier_inputs(pretrained):
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    raw = copy.copy(pretrained)  # shares the loaded models
    raw.normalize = False
    features = raw.embed_images([china, flower], progress=False)
    assert features.shape == (2, 1280) and features.dtype == np.float32
    # The pooled features feed the ImageNet head: the real weights and preprocessing must make it
    # see a palace (698) in the Summer Palace photo and a daisy (985) in the flower photo.
    with torch.inference_mode():
        logits = pretrained.image_model._fc(torch.from_numpy(features))
    assert logits.argmax(dim=1).tolist() == [698, 985]
    unit = pretrained.embed_images([china, flower, china], progress=False)
    np.testing.assert_allclose(unit[:2], features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(unit[0], unit[2], atol=1e-6)  # deterministic, batch-independent


def test_efficientnet_pixels_crop_the_centre_square_to_224_in_minus_one_to_one():
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 90, 100))  # a blue band left of the centre square
    x = efficientnet_pixels(image)
    assert tuple(x.shape) == (3, 224, 224)
    torch.testing.assert_close(x[:, 112, 112], torch.tensor([1.0, -1.0, -1.0]))
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[2], torch.tensor(-1.0), atol=0.05)  # no blue left anywhere
