"""C2PA content credentials and the one PNG writer (issue #39): the manifest survives the PNG round
trip and c2pa-python's own Reader validates it (signed with a test certificate made in code); an
edit names its parent; without a certificate the PNG is written without a manifest and one warning
per process says so; the recipe and A1111 text still read (sd-parsers); both families through
Result.save; the gallery's mark and the app's Save."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from a1111_oracle import assert_png_matches_recipe

c2pa = pytest.importorskip("c2pa")

from charstudio.config import GenerationConfig  # noqa: E402
from charstudio.provenance import credentials  # noqa: E402
from charstudio.provenance.png import write_png  # noqa: E402
from charstudio.provenance.testcert import make_test_certificate  # noqa: E402

TAM = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture
def cert(c2pa_cert):
    return c2pa_cert


@pytest.fixture
def unsigned(monkeypatch):
    monkeypatch.setattr(credentials, "_given", None)
    monkeypatch.setattr(credentials, "_warned_unsigned", False)
    monkeypatch.delenv(credentials.CERT_ENV, raising=False)
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)


def _picture(seed: int = 0, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _c2pa_reader(path, anchors: str | None = None):
    """c2pa-python's own Reader (not charstudio's wrapper), with `anchors` as its trust list."""
    context = c2pa.Context.from_dict({"trust": {"user_anchors": anchors}}) if anchors else None
    with open(path, "rb") as f:
        data = f.read()
    return c2pa.Reader("image/png", io.BytesIO(data), None, context) if context else \
        c2pa.Reader("image/png", io.BytesIO(data))


def test_the_manifest_survives_the_png_round_trip_and_c2pas_reader_validates_it(signing, tmp_path):
    import charstudio

    recipe = GenerationConfig(prompt="a lighthouse, night", seed=7, model="mini", width=64, height=64)
    path = write_png(tmp_path / "a.png", _picture(), recipe)
    # c2pa's reader, trusting the test root: the signature and data hash check, the signer is trusted.
    reader = _c2pa_reader(path, signing.root.read_text())
    assert reader.get_validation_state() == "Trusted", reader.get_validation_results()
    manifest = reader.get_active_manifest()
    (actions,) = [a["data"]["actions"] for a in manifest["assertions"] if a["label"].startswith("c2pa.actions")]
    assert [a["action"] for a in actions] == ["c2pa.created"]
    assert actions[0]["digitalSourceType"] == TAM
    assert actions[0]["parameters"][credentials.MODEL_KEY] == "mini"
    assert manifest["claim_generator_info"][0]["name"] == "charstudio"
    assert manifest["claim_generator_info"][0]["version"] == charstudio.__version__
    # Without a trust list the same file is Valid (signature good, signer unknown), as verify says.
    assert _c2pa_reader(path).get_validation_state() == "Valid"
    reading = credentials.read_manifest(path)
    assert reading.signature_valid and not reading.trusted and reading.model == "mini"
    # The pixels and the recipe come back as they went in.
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.asarray(_picture()))
        assert json.loads(im.text["charstudio"])["prompt"] == "a lighthouse, night"


def test_changed_pixels_break_the_signature(signing, tmp_path):
    path = write_png(tmp_path / "a.png", _picture(), GenerationConfig(prompt="x", model="mini"))
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT") + 8  # a byte inside the compressed pixels
    data[idat] ^= 0xFF
    (tmp_path / "b.png").write_bytes(bytes(data))
    reading = credentials.read_manifest(tmp_path / "b.png", signing.root.read_text())
    assert reading.present and not reading.signature_valid and "assertion.dataHash.mismatch" in reading.failures


def test_the_recipe_and_the_a1111_text_still_read_beside_the_manifest(signing, tiny_studio, tmp_path):
    from charstudio.result import Result

    result = tiny_studio.generate("a knight, red cape", seed=3, num_inference_steps=1, width=32, height=32,
                                  negative_prompt="blurry")
    (path,) = result.save(tmp_path)
    assert b"caBX" in path.read_bytes()  # the manifest's chunk
    assert_png_matches_recipe(path, result.recipe, "sd1")  # sd-parsers, an independent A1111 reader
    assert Result.from_png(path).recipe == result.recipe
    assert credentials.read_manifest(path).signature_valid


def test_both_families_save_through_the_one_writer(signing, family_studio, family, tmp_path):
    result = family_studio.generate("a castle", seed=1, num_inference_steps=1, width=64, height=64)
    (path,) = result.save(tmp_path)
    reading = credentials.read_manifest(path, signing.root.read_text())
    assert reading.trusted and reading.action_names == ["c2pa.created"]
    assert reading.model == result.recipe.model and reading.model
    assert_png_matches_recipe(path, result.recipe, "sdxl" if family.is_sdxl else "sd1")


def test_an_edited_picture_names_its_parent(signing, tiny_studio, tmp_path):
    first = tiny_studio.generate("a cat", seed=2, num_inference_steps=1, width=32, height=32)
    (parent,) = first.save(tmp_path, prefix="parent")
    edited = tiny_studio.inpaint(parent, mask="0,0,16,16", prompt="a dog", num_inference_steps=2)
    (child,) = edited.save(tmp_path, prefix="child")
    reading = credentials.read_manifest(child, signing.root.read_text())
    assert reading.trusted and reading.action_names == ["c2pa.opened", "c2pa.edited"]
    edit = reading.actions[1]
    assert edit["digitalSourceType"].endswith("compositeWithTrainedAlgorithmicMedia")
    # The parent file is the ingredient, its own signed manifest kept in the chain.
    assert reading.ingredients == [{"title": parent.name, "relationship": "parentOf", "has_manifest": True}]
    # A new picture from the same studio names none.
    assert credentials.read_manifest(parent).ingredients == []


def test_the_detail_pass_on_a_file_names_that_file(signing, tiny_studio, tmp_path):
    first = tiny_studio.generate("a cat", pose="waving", seed=2, num_inference_steps=2, width=64, height=64)
    (parent,) = first.save(tmp_path, prefix="parent")
    (child,) = tiny_studio.detail(parent, parts="face", steps=2).save(tmp_path, prefix="detail")
    reading = credentials.read_manifest(child)
    assert reading.action_names == ["c2pa.opened", "c2pa.edited"]
    assert reading.ingredients == [{"title": parent.name, "relationship": "parentOf", "has_manifest": True}]


def test_a_parent_in_memory_is_an_ingredient_too(signing, tmp_path):
    path = write_png(tmp_path / "e.png", _picture(1), GenerationConfig(prompt="x", model="mini"), parent=_picture(2))
    reading = credentials.read_manifest(path)
    assert reading.action_names == ["c2pa.opened", "c2pa.edited"]
    assert [i["relationship"] for i in reading.ingredients] == ["parentOf"]
    assert not reading.ingredients[0]["has_manifest"]


def test_without_a_certificate_no_manifest_and_one_warning_per_process(unsigned, tmp_path, caplog):
    recipe = GenerationConfig(prompt="x", model="mini")
    with caplog.at_level(logging.WARNING, logger="charstudio.provenance.credentials"):
        first = write_png(tmp_path / "a.png", _picture(), recipe)
        write_png(tmp_path / "b.png", _picture(), recipe)
    warnings = [r for r in caplog.records if "no C2PA certificate" in r.getMessage()]
    assert len(warnings) == 1 and credentials.CERT_ENV in warnings[0].getMessage()
    assert not credentials.read_manifest(first).present and b"caBX" not in first.read_bytes()
    with Image.open(first) as im:
        assert "charstudio" in im.text  # the recipe is written all the same


def test_the_writer_never_overwrites_silently(signing, tmp_path):
    from charstudio.errors import OutputError

    path = write_png(tmp_path / "a.png", _picture(1), GenerationConfig(prompt="x"))
    before = path.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_png(path, _picture(2), GenerationConfig(prompt="y"))
    assert path.read_bytes() == before
    write_png(path, _picture(2), GenerationConfig(prompt="y"), overwrite=True)
    assert path.read_bytes() != before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_half_set_or_wrong_certificate_is_named(signing, monkeypatch, tmp_path):
    from charstudio.errors import ConfigError

    monkeypatch.delenv(credentials.KEY_ENV)
    with pytest.raises(ConfigError, match=r"^CHARSTUDIO_C2PA_KEY=None is not valid: a PEM file too: CHARSTUDIO_C2PA_CERT"):
        write_png(tmp_path / "a.png", _picture(), GenerationConfig(prompt="x"))
    monkeypatch.setenv(credentials.KEY_ENV, str(signing.cert))  # a certificate where the key should be
    with pytest.raises(ConfigError, match=r"^CHARSTUDIO_C2PA_KEY=.* a PEM private key file; it holds no"):
        write_png(tmp_path / "a.png", _picture(), GenerationConfig(prompt="x"))
    # The root is a self-signed CA: c2pa refuses to sign with it, and the error says so.
    root_key = make_test_certificate(tmp_path / "other")
    monkeypatch.setenv(credentials.CERT_ENV, str(root_key.root))
    monkeypatch.setenv(credentials.KEY_ENV, str(root_key.key))
    with pytest.raises(ConfigError, match="c2pa refused to sign"):
        write_png(tmp_path / "a.png", _picture(), GenerationConfig(prompt="x"))
    assert not (tmp_path / "a.png").exists()


def test_use_certificate_in_code_overrides_the_environment(unsigned, cert, tmp_path):
    credentials.use_certificate(cert.cert, cert.key)
    try:
        path = write_png(tmp_path / "a.png", _picture(), GenerationConfig(prompt="x", model="tiny"))
    finally:
        credentials.use_certificate(None, None)
    assert credentials.read_manifest(path, cert.root.read_text()).trusted


def test_the_gallery_marks_each_picture_and_the_apps_save_keeps_both(signing, tiny_studio, tmp_path):
    pytest.importorskip("ipywidgets")
    from charstudio.ui.common import Gallery
    from charstudio.ui.explore import ExploreApp

    gallery = Gallery()
    marked = gallery.add(_picture(), GenerationConfig(prompt="x", model="tiny"))
    assert marked.mark.endswith("credentials") and "charstudio-mark" in marked.cell.children[2].value
    app = ExploreApp(tiny_studio, steps=1, output_dir=str(tmp_path / "out"))
    app.width.value = app.height.value = 64
    app.prompt.value = "a lighthouse"
    app.generate_button.click()
    assert app.wait(120)
    item = app.gallery.items[-1]
    watermarked = bool(getattr(item.recipe, "watermark", False))
    assert item.mark == ("watermarked / credentials" if watermarked else "credentials")
    (path,) = app.save()
    assert credentials.read_manifest(path, signing.root.read_text()).trusted
    with Image.open(path) as saved:  # the pixels as drawn, watermark and all
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(item.image.convert("RGB")))
