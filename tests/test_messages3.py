"""Messages that say what is wrong (issue #34, items 4b, 4c and 5).

Each test gives the bad input a user can give and asserts the message: one line, naming the
field (or path) and the value, with advice the user can follow (never diffusers' or
transformers' own loading options).
"""

from __future__ import annotations

import json
import shutil

import pytest

from ldm_export import save_ldm_checkpoint
from sgm_export import save_sgm_checkpoint

from charstudio.errors import ConfigError, ModelLoadError

pytestmark = pytest.mark.usefixtures("one_thread")

INTERNAL_ADVICE = ("low_cpu_mem_usage", "ignore_mismatched_sizes", "github.com")


def one_line(exc_or_text) -> str:
    text = str(exc_or_text)
    assert "\n" not in text.strip(), text
    return text


# -- --card names a card ---------------------------------------------------------------------

@pytest.fixture
def picture(tmp_path):
    from PIL import Image

    path = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (200, 120, 40)).save(path)
    return path


def test_inpaint_card_that_does_not_exist_is_refused_before_the_model_loads(picture, tmp_path, capsys, monkeypatch):
    from charstudio import Result
    from charstudio.cli import inpaint_commands, main

    common = ["inpaint", str(picture), "--mask", "0,0,32,32", "--model", "tiny", "--device", "cpu", "--steps", "4",
              "--seed", "3"]
    real_load = inpaint_commands.load_studio

    def no_model(args):
        raise AssertionError("the model was loaded for a card that does not exist")

    monkeypatch.setattr(inpaint_commands, "load_studio", no_model)
    assert main([*common, "--card", "ghostcard", "--out", str(tmp_path / "ghost")]) == 2
    err = one_line(capsys.readouterr().err.strip())
    assert "--card='ghostcard'" in err and "no such card" in err and "aiko" in err, err  # the known cards
    assert not (tmp_path / "ghost").exists()
    assert main([*common, "--card", str(tmp_path / "ghost.yaml"), "--out", str(tmp_path / "ghost")]) == 2
    err = one_line(capsys.readouterr().err.strip())
    assert f"--card={str(tmp_path / 'ghost.yaml')!r}" in err and "no such file" in err, err

    # A card that exists is drawn as the card; the same word as --prompt stays a free prompt.
    monkeypatch.setattr(inpaint_commands, "load_studio", real_load)
    assert main([*common, "--card", "aiko", "--out", str(tmp_path / "card")]) == 0
    recipe = Result.from_png(next((tmp_path / "card").glob("*.png"))).recipe
    assert recipe.character == "aiko" and "aiko" not in recipe.prompt.split(",")[0]
    assert main([*common, "--prompt", "ghostcard", "--out", str(tmp_path / "prompt")]) == 0
    recipe = Result.from_png(next((tmp_path / "prompt").glob("*.png"))).recipe
    assert recipe.character is None and recipe.prompt == "ghostcard"


def test_load_character_names_the_field_it_was_given_under():
    from charstudio.character import load_character

    with pytest.raises(ConfigError) as err:
        load_character("ghostcard", field="--card")
    assert err.value.field == "--card" and err.value.value == "ghostcard"
    with pytest.raises(ConfigError, match=r"^character='ghostcard' is not valid: no such card"):
        load_character("ghostcard")


# -- studio.max_batch --------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("x", "whole number"), (float("nan"), "whole number"),
                                             (0, ">= 1"), (2.5, "whole number"), (True, "whole number")])
def test_max_batch_is_checked_when_it_is_set(tiny_studio, value, expected):
    before = tiny_studio.max_batch
    with pytest.raises(ConfigError) as err:
        tiny_studio.max_batch = value
    message = one_line(err.value)
    assert err.value.field == "max_batch" and message.startswith(f"max_batch={value!r} is not valid")
    assert expected in message
    assert tiny_studio.max_batch == before  # a refused value changes nothing


def test_max_batch_takes_whole_numbers(tiny_studio):
    try:
        tiny_studio.max_batch = 2.0  # from JSON or a widget
        assert tiny_studio.max_batch == 2 and isinstance(tiny_studio.max_batch, int)
    finally:
        tiny_studio.max_batch = 8


# -- IP-Adapter messages -------------------------------------------------------------------------

def _adapter_file(path, cross: int, layers: int = 2):
    """A weight file whose to_k_ip layers take `cross`-wide text features (only its header is read)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"image_proj.proj.weight": torch.zeros(8, 8)}
    for i in range(layers):
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{proj}.weight"] = torch.zeros(8, cross)
    save_file(state, str(path))
    return path


def test_ip_adapter_file_is_named_whole_and_the_advice_does_not_contradict_itself(tiny_studio, tmp_path):
    from PIL import Image

    from charstudio.sheets import ip_adapter

    image = Image.new("RGB", (32, 32), "red")
    width = tiny_studio.components["unet"].config.cross_attention_dim
    assert width != 768  # tiny SD 1.x: narrower than SD 1.5, whose adapters are 768 wide

    # SD 1.5's width on a narrower SD 1.x model, given by path.
    path = _adapter_file(tmp_path / "home" / "assets" / "ip.safetensors", 768)
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter(tiny_studio, str(path), image):
            pass
    message = one_line(err.value)
    assert f"ip_adapter_weights={str(path)!r}" in message, message  # the path given, not split at its folder
    assert f"ip_adapter_weights={str(tmp_path / 'home')!r}" not in message
    assert "768" in message and str(width) in message
    assert "use an SD 1.x IP-Adapter" not in message and "made for this model" in message, message

    # The other family's adapter by path: named whole too, and the family advice stays.
    path = _adapter_file(tmp_path / "me" / "sdxl" / "ip_xl.safetensors", 2048)
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter(tiny_studio, str(path), image):
            pass
    message = one_line(err.value)
    assert f"ip_adapter_weights={str(path)!r} is an SDXL IP-Adapter" in message, message
    assert "the model is SD 1.x" in message and "use an SD 1.x IP-Adapter" in message

    # A file that is no weight file at all.
    junk = tmp_path / "x" / "y" / "junk.safetensors"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as err:
        with ip_adapter(tiny_studio, str(junk), image):
            pass
    message = one_line(err.value)
    assert f"ip_adapter_weights={str(junk)!r} is not a readable IP-Adapter weight file" in message, message
    assert tiny_studio.components["unet"].encoder_hid_proj is None


# -- --embedder folders -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """A good tiny CLIP vision model folder and broken copies of it, each broken one way."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("embedders")
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    vision = CLIPVisionConfig(**small, image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(vision).save_pretrained(root / "good")
    (root / "empty").mkdir()
    shutil.copytree(root / "good", root / "no_weights")
    (root / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(root / "good", root / "bad_json")
    (root / "bad_json" / "config.json").write_text("{not json", encoding="utf-8")
    CLIPTextModel(CLIPTextConfig(**small, vocab_size=300, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_model")
    shutil.copytree(root / "good", root / "wrong_shapes")  # config.json says 48 wide, the weights are 32
    config = json.loads((root / "good" / "config.json").read_text(encoding="utf-8"))
    (root / "wrong_shapes" / "config.json").write_text(json.dumps({**config, "hidden_size": 48}), encoding="utf-8")
    shutil.copytree(root / "good", root / "bad_weights")
    (root / "bad_weights" / "model.safetensors").write_bytes(b"garbage" * 8)
    (root / "a_file").write_text("x", encoding="utf-8")
    return root


@pytest.mark.parametrize("case, expected", [
    ("empty", "no config.json"),
    ("no_weights", "no weights (model.safetensors or pytorch_model.bin)"),
    ("bad_json", "config.json cannot be read as JSON"),
    ("text_model", "model_type 'clip_text_model'"),
    ("wrong_shapes", "weights do not have the shapes its config.json describes"),
    ("bad_weights", "weights cannot be read"),
    ("a_file", "is a file, not a model folder"),
    ("missing", "no such folder"),
])
def test_a_broken_embedder_folder_says_what_is_wrong_with_it(embedders, case, expected):
    from PIL import Image

    from charstudio.sheets import load_embedder, score

    folder = str(embedders / case)
    for load in (lambda: load_embedder(folder, download=False),
                 # what a sheet's --embedder goes through
                 lambda: score([Image.new("RGB", (32, 32), c) for c in ("red", "blue")], folder)):
        with pytest.raises(ModelLoadError) as err:
            load()
        message = one_line(err.value)
        assert message.startswith(f"embedder={folder!r}"), message
        assert expected in message, message
        assert "not available locally or from the hub" not in message
        assert "save_pretrained" in message  # what a working folder is
        assert not any(word in message for word in INTERNAL_ADVICE), message


def test_a_good_embedder_folder_still_loads(embedders):
    from charstudio.sheets import load_embedder

    model = load_embedder(str(embedders / "good"), download=False)
    assert type(model).__name__ == "CLIPVisionModelWithProjection" and model.config.hidden_size == 32


# -- single files ------------------------------------------------------------------------------------

def _pipeline_folder(components, folder, sdxl: bool):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        parts = {k: components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                            "unet", "scheduler")}
        StableDiffusionXLPipeline(**parts).save_pretrained(folder)
    else:
        parts = {k: components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
        StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    """Tiny SD 1.x and SDXL single files, the tiny SD 1.x config folder, and a copy of it whose
    UNet config lies about the cross-attention width."""
    from charstudio.models.tiny import build_tiny_components, build_tiny_sdxl_components

    root = tmp_path_factory.mktemp("single_files")
    sd1 = build_tiny_components(seed=0)
    files = dict(sd1=str(save_ldm_checkpoint(sd1, root / "sd1_finetune.safetensors")),
                 sdxl=str(save_sgm_checkpoint(build_tiny_sdxl_components(seed=0), root / "xl_finetune.safetensors")),
                 sd1_config=str(_pipeline_folder(sd1, root / "sd1_base", sdxl=False)))
    shutil.copytree(root / "sd1_base", root / "wrong_base")
    unet_config = root / "wrong_base" / "unet" / "config.json"
    config = json.loads(unet_config.read_text(encoding="utf-8"))
    unet_config.write_text(json.dumps({**config, "cross_attention_dim": config["cross_attention_dim"] + 16}),
                           encoding="utf-8")
    files["wrong_config"] = str(root / "wrong_base")
    return files


def _load_error(model, config=None) -> str:
    from charstudio import Studio

    with pytest.raises(ModelLoadError) as err:
        Studio.from_pretrained(model, config=config, device="cpu", dtype="fp32")
    message = one_line(err.value)
    assert model in message, message
    assert not any(word in message for word in INTERNAL_ADVICE), message
    return message


def test_sdxl_file_whose_text_encoder_is_not_the_base_models_points_to_config(single_files):
    """diffusers says only "does not seem to contain a valid CLIP model"."""
    message = _load_error(single_files["sdxl"])
    assert "--config" in message and "different file" in message, message
    # the tensor and the widths that disagree
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight is 32 wide" in message
    assert "hidden_size 768" in message


def test_file_and_config_whose_shapes_differ_name_the_tensor_not_diffusers_options(single_files):
    message = _load_error(single_files["sd1"], single_files["wrong_config"])
    assert f"config={single_files['wrong_config']!r}" in message
    assert "attn2.to_k.weight: expected [" in message and ", 48], got [" in message and ", 32]" in message, message
    assert "--config" in message and "different file" in message


def test_config_of_the_other_family_is_refused_by_name(single_files):
    """diffusers fails on a missing key ('label_emb.0.0.weight') deep in its loader."""
    message = _load_error(single_files["sdxl"], single_files["sd1_config"])
    assert f"config={single_files['sd1_config']!r} is an SD 1.x model's folder" in message, message
    assert "is an SDXL checkpoint" in message and "--config" in message and "label_emb" not in message


def test_cli_single_file_error_is_one_line_with_the_way_out(single_files, tmp_path, capsys):
    from charstudio.cli import main

    assert main(["generate", "a knight", "--model", single_files["sd1"], "--config", single_files["wrong_config"],
                 "--device", "cpu", "--steps", "1", "--out", str(tmp_path / "out")]) == 2
    # diffusers' progress bar shares stderr; the error is one line of its own
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("charstudio:")]
    assert len(errors) == 1, errors
    err = errors[0]
    assert err.startswith("charstudio: error: model=") and "--config" in err and "expected [" in err
    assert not any(word in err for word in INTERNAL_ADVICE), err
