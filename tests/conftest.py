"""Shared fixtures. Every test runs offline on models built in code."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import tempfile  # noqa: E402

# The user's own pose library (~/.charstudio/poses) must not leak into tests: poses saved there
# would join list_poses() and every loop over it. Tests that save poses set their own folder.
os.environ["CHARSTUDIO_POSE_DIR"] = tempfile.mkdtemp(prefix="charstudio-test-poses-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_studio():
    """One tiny Studio for the whole session (fp32 on CPU). Tests must not leave adapters or
    processors installed on it; tests that change the model build their own."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="session")
def mini_studio():
    """One `mini` Studio for the whole session (the shipped 64 px model, fp32 on CPU); the same
    rules as tiny_studio: put back whatever a test changes."""
    from charstudio import Studio

    return Studio.from_pretrained("mini", device="cpu")


@pytest.fixture
def fresh_studio():
    """A tiny Studio of the test's own, for tests that modify the model."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny", device="cpu")


@pytest.fixture
def run_spy(tiny_studio, monkeypatch):
    """Record every (config, kwargs) that reaches `tiny_studio.run`, then run it for real."""
    received = []
    real_run = tiny_studio.run

    def spy(config, **kwargs):
        received.append((config, kwargs))
        return real_run(config, **kwargs)

    monkeypatch.setattr(tiny_studio, "run", spy)
    return received


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model is too small to gain from threads; on a busy 2-core machine two threads
    per process made each run ~6x slower (measured: 1.5 s vs 0.22 s for 3 steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sdxl_studio():
    """One tiny-sdxl Studio for the whole session (fp32 on CPU); the same rules as tiny_studio."""
    from charstudio import Studio

    return Studio.from_pretrained("tiny-sdxl", device="cpu")


@pytest.fixture(scope="session", params=["sd1", "sdxl"])
def family(request):
    """The model family a family-parametrized test runs on (ids sd1 and sdxl): a helpers.TinyFamily.
    Session-scoped, so module fixtures built per family (LoRA files, checkpoints) are built once each."""
    from helpers import TinyFamily

    return TinyFamily(request.param)


@pytest.fixture(scope="session")
def family_studio(family, request):
    """The session's Studio of `family`'s tiny model: tiny_studio or tiny_sdxl_studio (same rules)."""
    return request.getfixturevalue("tiny_sdxl_studio" if family.is_sdxl else "tiny_studio")


@pytest.fixture(scope="session")
def c2pa_cert(tmp_path_factory):
    """A throwaway C2PA test certificate (a test root and the signer it issues), made in code."""
    from charstudio.provenance.testcert import make_test_certificate

    return make_test_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def signing(c2pa_cert, monkeypatch):
    """The test certificate in the environment, as a user sets theirs."""
    from charstudio.provenance import credentials

    monkeypatch.setattr(credentials, "_given", None)
    monkeypatch.setenv(credentials.CERT_ENV, str(c2pa_cert.cert))
    monkeypatch.setenv(credentials.KEY_ENV, str(c2pa_cert.key))
    monkeypatch.delenv(credentials.TRUST_ENV, raising=False)
    return c2pa_cert
