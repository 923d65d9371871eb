"""Each kind of bad input gets a one-line error naming what was wrong and what would work."""

from __future__ import annotations

import pytest

from charstudio import CardError, ConfigError, GenerationConfig, ModelLoadError, OutputError, Studio


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def test_unknown_preset():
    with pytest.raises(ModelLoadError) as e:
        Studio.from_pretrained("sd99")
    msg = one_line(e.value)
    assert "'sd99'" in msg and "tiny" in msg and "sd15" in msg


def test_missing_path(tmp_path):
    missing = tmp_path / "nope" / "model.safetensors"
    with pytest.raises(ModelLoadError) as e:
        Studio.from_pretrained(str(missing))
    assert "no such file" in one_line(e.value) and str(missing) in str(e.value)


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        Studio.from_pretrained(str(tmp_path))
    assert "model_index.json" in one_line(e.value)


def test_hub_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        Studio.from_pretrained("someone/not-cached-model-xyz")
    msg = one_line(e.value)
    assert "HF_HUB_OFFLINE" in msg and "someone/not-cached-model-xyz" in msg and "tiny" in msg


def test_pickled_checkpoint_needs_opt_in(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even loaded")
    with pytest.raises(ModelLoadError) as e:
        Studio.from_pretrained(str(ckpt))
    msg = one_line(e.value)
    assert "allow_pickle" in msg and ".safetensors" in msg
    assert ckpt.read_bytes() == b"not even loaded"  # nothing touched


@pytest.mark.parametrize("field", ["width", "height"])
def test_size_not_multiple_of_8(tiny_studio, field):
    with pytest.raises(ConfigError) as e:
        tiny_studio.generate("a cat", **{field: 130}, num_inference_steps=1)
    msg = one_line(e.value)
    assert f"{field}=130" in msg and "multiple of 8" in msg and "128" in msg and "136" in msg


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one(tiny_studio, steps):
    with pytest.raises(ConfigError) as e:
        tiny_studio.generate("a cat", num_inference_steps=steps)
    assert f"num_inference_steps={steps}" in one_line(e.value)


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_empty_prompt_without_card(tiny_studio, prompt):
    with pytest.raises(ConfigError) as e:
        tiny_studio.generate(prompt, num_inference_steps=1)
    assert "prompt" in one_line(e.value) and "card" in str(e.value)


def test_unknown_style(tiny_studio):
    with pytest.raises(ConfigError) as e:
        tiny_studio.generate("aiko", style="oil-on-velvet", num_inference_steps=1)
    msg = one_line(e.value)
    assert "style='oil-on-velvet'" in msg and "watercolor" in msg


def test_unknown_scheduler(tiny_studio):
    with pytest.raises(ConfigError) as e:
        tiny_studio.generate("aiko", scheduler="dpm++99", num_inference_steps=1)
    msg = one_line(e.value)
    assert "scheduler='dpm++99'" in msg and "euler-a" in msg


def test_unknown_card_or_path(tiny_studio, tmp_path):
    with pytest.raises(CardError) as e:
        tiny_studio.generate(str(tmp_path / "ghost.yaml"))
    assert "no such file" in one_line(e.value)


def test_malformed_card_yaml_names_file_and_line(tmp_path, tiny_studio):
    card = tmp_path / "broken.yaml"
    card.write_text("name: broken\ntraits: [unclosed\n")
    with pytest.raises(CardError) as e:
        tiny_studio.generate(str(card))
    msg = one_line(e.value)
    assert str(card) in msg and "line" in msg


def test_card_with_bad_field_names_file_and_field(tmp_path):
    from charstudio import load_character

    card = tmp_path / "bad.yaml"
    card.write_text("name: bad\ndescription: x\nseed: minus one\n")
    with pytest.raises(CardError) as e:
        load_character(str(card))
    msg = one_line(e.value)
    assert str(card) in msg and "'seed'" in msg and "whole number" in msg
    card.write_text("name: bad\ndescription: x\nhiar: red\n")
    with pytest.raises(CardError, match="unknown field 'hiar'"):
        load_character(str(card))


def test_output_directory_that_is_a_file(tiny_studio, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("precious")
    result = tiny_studio.generate("a cat", seed=1, num_inference_steps=1)
    with pytest.raises(OutputError) as e:
        result.save(blocker)
    assert "is a file" in one_line(e.value)
    assert blocker.read_text() == "precious"


def test_config_errors_name_field_and_value():
    with pytest.raises(ConfigError, match=r"guidance_scale=nan"):
        GenerationConfig(prompt="x", guidance_scale=float("nan"))
    with pytest.raises(ConfigError, match=r"seed=-1"):
        GenerationConfig(prompt="x", seed=-1)
    with pytest.raises(ConfigError, match=r"control_guidance_start=0.9"):
        GenerationConfig(prompt="x", control_guidance_start=0.9, control_guidance_end=0.5)


def test_bad_device_and_dtype():
    with pytest.raises(ConfigError, match="dtype='fp8'"):
        Studio.from_pretrained("tiny", dtype="fp8")
    with pytest.raises(ConfigError, match="device='tpu'"):
        Studio.from_pretrained("tiny", device="tpu")


def test_control_image_of_another_size(tiny_studio):
    from PIL import Image

    config = tiny_studio.make_config("a fox", seed=4, num_inference_steps=1)
    with pytest.raises(ConfigError) as e:
        tiny_studio.run(config, control_image=Image.new("RGB", (64, 64)))
    assert "64x64" in one_line(e.value) and "128x128" in str(e.value)


def test_recipe_with_lora_that_is_not_loaded(tiny_studio):
    config = tiny_studio.make_config("a fox", seed=4, num_inference_steps=1).replace(loras={"ghost": 0.7})
    with pytest.raises(ConfigError, match="ghost"):
        tiny_studio.run(config)


# Wrong Python types stop at the argument, with a ConfigError that names it (not an
# AttributeError from deep inside).
@pytest.mark.parametrize("call,field", [
    (lambda s: s.generate(123), "character_or_prompt"),
    (lambda s: s.generate(["a", "b"]), "character_or_prompt"),
    (lambda s: s.generate("a fox", extra=5), "extra"),
    (lambda s: s.generate("a fox", style=["watercolor"]), "style"),
    (lambda s: s.generate("a fox", negative_prompt=0), "negative_prompt"),
    (lambda s: s.make_config({"prompt": "a fox"}), "character_or_prompt"),
    (lambda s: s.interpolate(("a girl", 1), ("a boy", 2), frames=3), "a"),
    (lambda s: s.interpolate("a girl", ("a boy", 2), frames=3), "b"),
    (lambda s: s.interpolate("a girl", "a boy", frames=3.7), "frames"),
    (lambda s: s.interpolate("a girl", "a boy", frames="8"), "frames"),
])
def test_wrong_python_types_name_the_argument(tiny_studio, call, field):
    with pytest.raises(ConfigError) as e:
        call(tiny_studio)
    assert e.value.field == field
    assert one_line(e.value).startswith(f"{field}=")


def test_a_recipe_without_a_prompt_names_the_field():
    for data in ({}, {"seed": 3, "steps": 20}):
        with pytest.raises(ConfigError) as e:
            GenerationConfig.from_dict(data)
        assert e.value.field == "recipe.prompt" and "missing" in one_line(e.value)
    with pytest.raises(ConfigError, match="recipe="):
        GenerationConfig.from_dict(["a fox"])


def test_card_lora_weight_must_be_a_finite_number():
    from charstudio.character import Character

    for weight in (float("nan"), float("inf"), 50.0, "0.8"):
        with pytest.raises(CardError, match="lora_weight"):
            Character(name="aiko", description="a girl", lora_weight=weight)
    assert Character(name="aiko", description="a girl", lora_weight=-0.5).lora_weight == -0.5


def test_whole_numbers_follow_one_rule_everywhere(tmp_path):
    """GenerationConfig and LoraTrainingConfig (and the CLI, which builds them) accept 5.0 and refuse 3.7."""
    from charstudio.training import LoraTrainingConfig

    def training(**kw):
        return LoraTrainingConfig(data_dir=str(tmp_path), name="x", **kw)

    assert GenerationConfig(prompt="a fox", num_inference_steps=5.0).num_inference_steps == 5
    assert training(max_train_steps=5.0, rank=4.0).max_train_steps == 5
    assert isinstance(training(rank=4.0).rank, int)
    for make, field in ((lambda v: GenerationConfig(prompt="a fox", num_inference_steps=v), "num_inference_steps"),
                        (lambda v: training(max_train_steps=v), "max_train_steps"),
                        (lambda v: training(rank=v), "rank")):
        for bad in (3.7, "5", True, float("nan")):
            with pytest.raises(ConfigError) as e:
                make(bad)
            assert e.value.field == field


def _png_with(path, chunks):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("settings,field,expected", [
    ("Steps: 20, Size: 64", "'Size'", "512x512"),
    ("Steps: 20, Seed: abc", "'Seed'", "whole number"),
    ("Steps: 20, CFG scale: high", "'CFG scale'", "a number"),
    ("Steps: 20, Clip skip: two", "'Clip skip'", "whole number"),
    ("Steps: 20, Size: 500x500", "width", "multiple of 8"),
])
def test_a1111_text_errors_name_the_file_and_the_field(tmp_path, settings, field, expected):
    from charstudio.result import Result

    png = _png_with(tmp_path / "a1111.png", {"parameters": f"a cat\nNegative prompt: blurry\n{settings}"})
    with pytest.raises(ConfigError) as e:
        Result.from_png(png)
    msg = one_line(e.value)
    assert str(png) in msg and field in msg and expected in msg


def test_a_broken_or_incomplete_recipe_chunk_is_named_not_called_missing(tmp_path):
    from charstudio import CharstudioError
    from charstudio.result import Result

    broken = _png_with(tmp_path / "broken.png", {"charstudio": '{"prompt": "a cat", '})
    with pytest.raises(CharstudioError, match="not valid JSON") as e:
        Result.from_png(broken)
    assert str(broken) in one_line(e.value) and "no recipe" not in str(e.value)
    no_prompt = _png_with(tmp_path / "no_prompt.png", {"charstudio": '{"seed": 3}'})
    with pytest.raises(ConfigError, match="recipe.prompt") as e:
        Result.from_png(no_prompt)
    assert str(no_prompt) in one_line(e.value)


def test_binary_garbage_cards_styles_and_poses_name_their_file(tmp_path, monkeypatch):
    from charstudio import CharstudioError
    from charstudio.character import Character, load_styles
    from charstudio.pose import load_pose

    garbage = bytes([0xFF, 0xFE, 0x00, 0x81]) * 8
    card = tmp_path / "characters" / "junk.yaml"
    card.parent.mkdir()
    card.write_bytes(garbage)
    with pytest.raises(CardError) as e:
        Character.load(card)
    assert str(card) in one_line(e.value) and "not UTF-8" in str(e.value) and "codec" not in str(e.value)
    (tmp_path / "styles.yaml").write_bytes(garbage)
    monkeypatch.setenv("CHARSTUDIO_PROMPTS", str(tmp_path))
    with pytest.raises(CardError, match="styles.*not UTF-8"):
        load_styles()
    pose = tmp_path / "junk.json"
    pose.write_bytes(garbage)
    with pytest.raises(CharstudioError) as e:
        load_pose(str(pose))
    assert str(pose) in one_line(e.value) and "not UTF-8" in str(e.value)
