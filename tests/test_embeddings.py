"""Textual-inversion embeddings on both families: A1111 files built in code on the tiny models
(text encoders 32 wide; tiny-sdxl's second 48), loaded through diffusers' own loader into the
studio's shared tokenizers and encoders, written in prompts and cards, recorded in recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from charstudio import Result, Studio
from charstudio.character import Character
from charstudio.config import GenerationConfig
from charstudio.errors import CardError, ConfigError
from charstudio.schedulers import make_scheduler
from helpers import pixels
from offload_spy import count_offload_hooks, count_tiled_decodes

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*gives poor pictures:UserWarning")]  # tiny-sdxl at 64 px

FAST = dict(num_inference_steps=2, width=64, height=64)


@pytest.fixture
def sd():
    return Studio.from_pretrained("tiny", device="cpu")


@pytest.fixture
def xl():
    return Studio.from_pretrained("tiny-sdxl", device="cpu")


def sd1_file(path, n=1, width=32, key="emb_params", seed=0):
    torch.manual_seed(seed)
    vectors = torch.randn(n, width)
    save_file({key: vectors}, str(path))
    return vectors


def sdxl_file(path, n=1, widths=(32, 48), seed=1):
    torch.manual_seed(seed)
    clip_l, clip_g = torch.randn(n, widths[0]), torch.randn(n, widths[1])
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    return clip_l, clip_g


def state(studio):
    """Everything a load changes: each tokenizer's size and added words, each encoder's matrix."""
    return [(len(studio.components[tok]), dict(studio.components[tok].added_tokens_encoder),
             studio.components[enc].get_input_embeddings().weight.requires_grad,
             studio.components[enc].get_input_embeddings().weight.detach().clone())
            for tok, enc in studio.family.text_parts]


def assert_same_state(before, after):
    for (*facts0, w0), (*facts1, w1) in zip(before, after, strict=True):
        assert facts0 == facts1
        assert torch.equal(w0, w1)


def refused(studio, *args, match, error=ConfigError, **kwargs):
    """Load and expect a one-line refusal that leaves the tokenizers and encoders as they were."""
    before = state(studio)
    with pytest.raises(error, match=match) as info:
        studio.load_embedding(*args, **kwargs)
    assert "\n" not in str(info.value)
    assert_same_state(before, state(studio))
    assert not studio.loaded_embeddings
    return str(info.value)


def vectors_of(studio, word, part=0):
    tok, enc = studio.family.text_parts[part]
    ids = studio.encoder.tokenize(word) if part == 0 else studio.encoder.second.tokenize(word)
    with torch.no_grad():
        return studio.components[enc].get_input_embeddings()(torch.tensor(ids))


# -- SD 1.x -------------------------------------------------------------------------------------
def test_the_embedding_changes_the_picture_only_where_its_word_is_written(sd, tmp_path):
    path = tmp_path / "easyneg.safetensors"
    sd1_file(path)
    plain_before = sd.generate("a girl, blurry", seed=3, **FAST)
    word_before = sd.generate("a girl", negative_prompt="easyneg", seed=3, **FAST)  # only letters so far

    assert sd.load_embedding(path) == "easyneg"  # the word is the file's name, as in A1111
    plain_after = sd.generate("a girl, blurry", seed=3, **FAST)
    word_after = sd.generate("a girl", negative_prompt="easyneg", seed=3, **FAST)
    assert np.array_equal(pixels(plain_before.image), pixels(plain_after.image))
    assert not np.array_equal(pixels(word_before.image), pixels(word_after.image))
    assert plain_after.recipe.embeddings == {}
    assert word_after.recipe.embeddings == {"easyneg": str(path.resolve())}
    assert sd.load_embedding(path) == "easyneg"  # the same file again: nothing to do
    # Drawn in one batch, each recipe records only the words its own prompts write.
    both = sd.run_batch([plain_after.recipe, word_after.recipe])
    assert both.extras["latents"] and [r.embeddings for r in both.recipes] == [{}, {"easyneg": str(path.resolve())}]


def test_each_vector_of_a_multi_vector_word_is_its_token_embedding(sd, tmp_path):
    vectors = sd1_file(tmp_path / "EasyNeg.safetensors", n=3)
    assert sd.load_embedding(tmp_path / "EasyNeg.safetensors") == "EasyNeg"
    # the CLIP tokenizer lower-cases prompts: the word matches however it is written
    for written in ("EasyNeg", "easyneg"):
        assert len(sd.encoder.tokenize(written)) == 3
        torch.testing.assert_close(vectors_of(sd, written), vectors, rtol=0, atol=0)
    # A1111 weights reach all three tokens; around words, and in the second 75-token chunk
    from charstudio.prompt_syntax import parse_weighted

    ids = sd.encoder.tokenize("easyneg")
    long = " ".join(["red"] * 30) + ", (easyneg:1.3), blue"  # 91 byte tokens before the word
    tokens, weights = [], []  # as the encoder joins the weighted pieces
    for text, weight in parse_weighted(long):
        piece = sd.encoder.tokenize(text)
        tokens += piece
        weights += [weight] * len(piece)
    at = tokens.index(ids[0])
    assert at > 75 and tokens[at:at + 3] == ids and weights[at:at + 3] == [1.3] * 3
    encoded = sd.encoder.encode(long, "")
    assert encoded.num_chunks == 2
    assert not torch.equal(encoded.prompt_embeds, sd.encoder.encode(long.replace(":1.3", ":1.0"), "").prompt_embeds)


def test_pictures_match_diffusers_own_textual_inversion_pipeline(sd, tmp_path):
    """diffusers' pipeline expands the word with maybe_convert_prompt; charstudio's encoder on
    ids: the same pixels."""
    sd1_file(tmp_path / "easyneg.safetensors", n=2)
    sd.load_embedding(tmp_path / "easyneg.safetensors")
    ours = sd.generate("a girl, easyneg", negative_prompt="blurry", seed=5, scheduler="euler", watermark=False,
                       **FAST)  # (the watermark off: diffusers puts none on)
    pipe = sd.pipeline("txt2img")
    pipe.scheduler = make_scheduler("euler", sd.base_scheduler_config)
    plain = pipe("a girl, easyneg", negative_prompt="blurry", guidance_scale=ours.recipe.guidance_scale,
                 generator=torch.Generator().manual_seed(5), **FAST).images[0]
    assert np.array_equal(pixels(ours.image), pixels(plain))


def test_string_to_param_layout_and_a_pickled_file_with_the_opt_in(sd, tmp_path):
    old = sd1_file(tmp_path / "oldstyle.safetensors", key="string_to_param.*", seed=4)
    sd.load_embedding(tmp_path / "oldstyle.safetensors")
    torch.testing.assert_close(vectors_of(sd, "oldstyle"), old, rtol=0, atol=0)

    pt = tmp_path / "charturner.pt"  # A1111's pickled layout
    torch.manual_seed(5)
    vectors = torch.nn.Parameter(torch.randn(2, 32))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "charturner",
                "step": 1000, "sd_checkpoint": "abc", "sd_checkpoint_name": "sd15"}, pt)
    before = state(sd)
    with pytest.raises(ConfigError, match=r"pickled.*allow_pickle=True") as info:
        sd.load_embedding(pt)
    assert "\n" not in str(info.value)
    assert_same_state(before, state(sd))
    assert sd.load_embedding(pt, allow_pickle=True) == "charturner"
    torch.testing.assert_close(vectors_of(sd, "charturner"), vectors.detach(), rtol=0, atol=0)
    # the studio's own opt-in (Studio.from_pretrained(..., allow_pickle=True)) counts too
    sd.unload_embedding("charturner")
    sd.allow_pickle = True
    assert sd.load_embedding(pt) == "charturner"


class NotATensor:  # a pickled object of any class: torch's weights-only loader refuses it
    pass


def test_a_pickle_with_more_than_tensors_is_refused_even_with_the_opt_in(sd, tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "payload": NotATensor()}, pt)
    refused(sd, pt, allow_pickle=True, match="weights_only=True", error=ValueError)


def test_unloading_gives_the_model_back_and_keeps_other_words(sd, tmp_path):
    before = state(sd)
    a = sd1_file(tmp_path / "first.safetensors", n=2, seed=1)
    sd1_file(tmp_path / "second.safetensors", n=3, seed=2)
    sd.load_embedding(tmp_path / "first.safetensors")
    sd.load_embedding(tmp_path / "second.safetensors")
    sd.unload_embedding("second")
    assert set(sd.loaded_embeddings) == {"first"}
    torch.testing.assert_close(vectors_of(sd, "first"), a, rtol=0, atol=0)
    sd.unload_embedding("first")
    assert_same_state(before, state(sd))
    with pytest.raises(ConfigError, match="no embedding of that word is loaded"):
        sd.unload_embedding("first")


# -- SDXL ---------------------------------------------------------------------------------------
def test_sdxl_loads_clip_l_into_text_encoder_and_clip_g_into_text_encoder_2(xl, tmp_path):
    clip_l, clip_g = sdxl_file(tmp_path / "xlneg.safetensors", n=2)
    word_before = xl.generate("a girl, xlneg", seed=2, **FAST)
    assert xl.load_embedding(tmp_path / "xlneg.safetensors") == "xlneg"
    torch.testing.assert_close(vectors_of(xl, "xlneg", 0), clip_l, rtol=0, atol=0)
    torch.testing.assert_close(vectors_of(xl, "xlneg", 1), clip_g, rtol=0, atol=0)
    assert xl.encoder.tokenize("(xlneg:1.2)") == xl.encoder.second.tokenize("(xlneg:1.2)")  # chunks line up
    word_after = xl.generate("a girl, xlneg", seed=2, **FAST)
    assert not np.array_equal(pixels(word_before.image), pixels(word_after.image))
    assert word_after.recipe.embeddings == {"xlneg": str((tmp_path / "xlneg.safetensors").resolve())}


def test_a_failure_in_the_second_encoder_takes_the_first_back_out(xl, tmp_path, monkeypatch):
    sdxl_file(tmp_path / "xlneg.safetensors", n=2)
    pipe = xl.pipeline("txt2img")
    real, calls = pipe.load_textual_inversion, []

    def fails_on_the_second(*args, **kwargs):
        calls.append(kwargs["text_encoder"])
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, "load_textual_inversion", fails_on_the_second)
    refused(xl, tmp_path / "xlneg.safetensors", match="out of memory", error=RuntimeError)
    assert calls == [xl.components["text_encoder"], xl.components["text_encoder_2"]]


def test_low_vram_mode_loads_between_runs_and_draws_the_same(tmp_path, monkeypatch):
    """An embedding loaded between low-VRAM runs (the loader takes the offload hooks off): the next
    run puts them back, every part runs behind its hook, and the picture (decoded in tiles, as
    low-VRAM mode decodes) is the one a studio without offloading draws with the embedding."""
    sd1_file(tmp_path / "neg.safetensors", n=2)
    plain, low = Studio.from_pretrained("tiny", device="cpu"), Studio.from_pretrained("tiny", device="cpu")
    plain.components["vae"].enable_tiling()  # the same decode, without offloading
    low.enable_low_vram()
    hooks = count_offload_hooks(monkeypatch, low.components)
    tiles = count_tiled_decodes(monkeypatch, low.components["vae"])
    big = dict(FAST, width=192, height=160)  # 24x20 latents, past the VAE's 16-latent tile
    low.generate("a girl", seed=1, **big)  # installs the offload hooks
    assert hooks["unet"] == 2 and hooks["text_encoder"] >= 1 and hooks["vae"] == 1, hooks
    for studio in (plain, low):
        studio.load_embedding(tmp_path / "neg.safetensors")
    assert not hasattr(low.components["text_encoder"], "_hf_hook")  # the loader's turn: hooks off
    before = hooks.copy()
    a, b = (s.generate("a girl, neg", seed=1, **big) for s in (plain, low))
    ran = hooks - before
    assert ran["unet"] == 2 and ran["text_encoder"] >= 1 and ran["vae"] == 1, ran  # back on, all parts
    assert {torch.device(d).type for d in hooks.devices} == {"cpu"} and hasattr(low.components["unet"], "_hf_hook")
    assert len(tiles) == 2 and tiles[-1][-2:] == (20, 24)
    assert np.array_equal(pixels(a.image), pixels(b.image)) and b.recipe.embeddings == a.recipe.embeddings
    without = Studio.from_pretrained("tiny", device="cpu")
    without.load_embedding(tmp_path / "neg.safetensors")
    untiled = without.generate("a girl, neg", seed=1, **big)
    assert 0.3 < np.abs(pixels(untiled.image) - pixels(b.image)).mean() < 8  # tiling did change the decode


# -- cards, recipes, PNGs -----------------------------------------------------------------------
def test_a_card_names_its_embeddings_and_generating_it_loads_them(sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # named embeddings live in ./embeddings, like ./lora
    (tmp_path / "embeddings").mkdir()
    sd1_file(tmp_path / "embeddings" / "easyneg.safetensors")
    card = Character(name="neggy", description="a girl with red hair", negative_prompt="(easyneg:1.2), blurry",
                     embeddings=["easyneg"])
    saved = Character.load(card.save(tmp_path / "neggy.yaml"))
    assert saved.embeddings == ["easyneg"] and "embeddings" not in Character(name="x", description="y").to_dict()

    result = sd.generate(saved, seed=4, **FAST)
    assert set(sd.loaded_embeddings) == {"easyneg"}
    assert result.recipe.negative_prompt == "(easyneg:1.2), blurry"
    assert result.recipe.embeddings == {"easyneg": str((tmp_path / "embeddings" / "easyneg.safetensors").resolve())}
    assert sd.generate(saved, seed=4, **FAST).recipe.embeddings == result.recipe.embeddings  # no second load
    with pytest.raises(CardError, match="embeddings"):
        Character(name="x", description="y", embeddings=[3])
    with pytest.raises(ConfigError, match="no embedding of that name in 'embeddings' .known: easyneg"):
        sd.generate(Character(name="x", description="y", embeddings=["missing"]), **FAST)


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_a_png_reruns_bit_identically_and_loads_its_embedding(model, tmp_path, monkeypatch):
    file = tmp_path / "downloads" / "neg.safetensors"
    file.parent.mkdir()
    (sd1_file if model == "tiny" else sdxl_file)(file, n=2)
    first = Studio.from_pretrained(model, device="cpu")
    first.load_embedding(file)
    png = first.generate("a girl", negative_prompt="(neg:1.1), blurry", seed=7, **FAST).save(tmp_path / "out")[0]
    recipe = Result.from_png(png).recipe
    assert recipe.embeddings == {"neg": str(file.resolve())}

    again = Studio.from_pretrained(model, device="cpu")  # a new session: nothing loaded
    rerun = again.run(recipe)
    assert again.loaded_embeddings == {"neg": file.resolve()}
    assert np.array_equal(pixels(rerun.image), pixels(Result.from_png(png).image))

    # moved: found by its file name in the studio's embeddings folder (another machine's path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "embeddings").mkdir()
    file.rename(tmp_path / "embeddings" / file.name)
    moved = Studio.from_pretrained(model, device="cpu")
    assert np.array_equal(pixels(moved.run(recipe).image), pixels(rerun.image))

    (tmp_path / "embeddings" / file.name).unlink()
    gone = Studio.from_pretrained(model, device="cpu")
    with pytest.raises(ConfigError, match=r"embedding 'neg', whose file .*neg\.safetensors' is missing") as info:
        gone.run(recipe)
    assert "\n" not in str(info.value) and not gone.loaded_embeddings


def test_a_recipe_is_refused_when_its_word_is_loaded_from_another_file(sd, tmp_path):
    sd1_file(tmp_path / "neg.safetensors", seed=1)
    (tmp_path / "other").mkdir()
    sd1_file(tmp_path / "other" / "neg.safetensors", seed=2)
    sd.load_embedding(tmp_path / "neg.safetensors")
    recipe = sd.make_config("a girl, neg", seed=1, **FAST)
    sd.unload_embedding("neg")
    sd.load_embedding(tmp_path / "other" / "neg.safetensors")
    with pytest.raises(ConfigError, match=r"another file than the loaded .*unload_embedding\('neg'\)"):
        sd.run(recipe)
    with pytest.raises(ConfigError, match="embeddings="):
        GenerationConfig(prompt="a girl", embeddings={"neg": 3})


# -- refusals: one line, nothing left behind ------------------------------------------------------
def test_an_sd1_embedding_is_refused_by_sdxl_and_an_sdxl_one_by_sd1(sd, xl, tmp_path):
    sd1_file(tmp_path / "sd1.safetensors")
    sdxl_file(tmp_path / "xl.safetensors")
    for message in (refused(xl, tmp_path / "sd1.safetensors", match="SD 1.x embedding"),
                    refused(sd, tmp_path / "xl.safetensors", match="SDXL embedding")):
        assert "SD 1.x" in message and "SDXL" in message


@pytest.mark.parametrize("case", ["sd1", "sdxl-one-tensor", "sdxl-pair"])
def test_vectors_no_encoder_is_as_wide_as_are_refused(case, sd, xl, tmp_path):
    path = tmp_path / "wide.safetensors"
    if case == "sd1":
        sd1_file(path, width=40)
        message = refused(sd, path, match="40 wide")
        assert "32 wide" in message
    else:
        sd1_file(path, width=40) if case == "sdxl-one-tensor" else sdxl_file(path, widths=(40, 48))
        message = refused(xl, path, match="40 wide")
        assert "32" in message and "48" in message


def clip_vocab_studio():
    """tiny with the real 49408-word CLIP vocabulary (the tiny one knows only single letters)."""
    from charstudio.models.tiny import build_tiny_components
    from charstudio.models.tokenizers import clip_tokenizer

    parts = build_tiny_components()
    parts["tokenizer"] = clip_tokenizer()
    parts["text_encoder"].resize_token_embeddings(len(parts["tokenizer"]), mean_resizing=False)
    return Studio(parts, model_id="tiny-clip-vocab", device=torch.device("cpu"), dtype=torch.float32)


def test_a_word_the_tokenizer_already_knows_is_refused(sd, tmp_path):
    path = tmp_path / "mine.safetensors"
    sd1_file(path)
    refused(clip_vocab_studio(), path, token="cat", match="already a word of the tokenizer's vocabulary")
    refused(sd, path, token="a", match="already a word")  # a whole word in the byte-level vocabulary
    refused(sd, path, token="<|endoftext|>", match="cannot hold")
    refused(sd, path, token="two words", match="token='two_words'")
    # a word already loaded from another file: refused until it is unloaded
    sd1_file(tmp_path / "other.safetensors", seed=9)
    sd.load_embedding(path)
    before = state(sd)
    with pytest.raises(ConfigError, match=r"already loaded from .*mine\.safetensors"):
        sd.load_embedding(tmp_path / "other.safetensors", token="mine")
    with pytest.raises(ConfigError, match="already a loaded embedding"):
        sd.load_embedding(tmp_path / "other.safetensors", token="MINE")
    assert_same_state(before, state(sd))


def test_bad_files_are_refused_in_one_line(sd, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors at all")
    refused(sd, tmp_path / "model.safetensors", match="cannot be read as a safetensors file", error=ValueError)
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(tmp_path / "two.safetensors"))
    refused(sd, tmp_path / "two.safetensors", match="expected emb_params", error=ValueError)
    save_file({"emb_params": torch.zeros(2, 3, 32)}, str(tmp_path / "cube.safetensors"))
    refused(sd, tmp_path / "cube.safetensors", match=r"\(vectors, width\)", error=ValueError)
    save_file({"emb_params": torch.full((1, 32), float("nan"))}, str(tmp_path / "nan.safetensors"))
    refused(sd, tmp_path / "nan.safetensors", match="NaN", error=ValueError)
    refused(sd, "nowhere", match="no such file, and no embedding of that name")


def test_the_cli_loads_embeddings_by_name_or_file_with_an_optional_word(tmp_path, monkeypatch, capsys):
    from charstudio.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    sd1_file(tmp_path / "mine" / "neg.safetensors")
    sd1_file(tmp_path / "mine" / "Style.safetensors", n=2)
    rc = main(["generate", "a girl, (style:1.1)", "--negative", "neg", "--model", "tiny", "--steps", "2",
               "--width", "64", "--height", "64", "--seed", "1", "--embeddings-dir", "mine", "--embedding", "neg",
               "--embedding", "style=mine/Style.safetensors", "--out", "out"])
    assert rc == 0
    png = capsys.readouterr().out.split()[0]
    assert Result.from_png(png).recipe.embeddings == {"neg": str((tmp_path / "mine" / "neg.safetensors").resolve()),
                                                      "style": str((tmp_path / "mine" / "Style.safetensors").resolve())}
    assert main(["generate", "a girl", "--model", "tiny", "--embedding", "typo", "--out", "out"]) == 2
    assert "embedding='typo'" in capsys.readouterr().err
