"""The engine registry and the engine interface, with the built-in cell engine and a real test engine."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rememory.engine import (
    DEFAULT_ENGINE,
    Artifact,
    DecodeItem,
    InMemoryModels,
    create_engine,
    engine_class,
    engine_info,
    engine_names,
    register_engine,
)
from rememory.errors import ConfigError, IntegrityError, UnknownEngineError

from .conftest import REPO
from .enginekit import NAME, TableTraceEngine

TEXTS = [b"", b"a", "\u00e9\u4e2d\U0001f600".encode(), "Привет, мир! 🎉 mixed scripts".encode(), bytes(range(256)) * 3]


def test_registry_lists_engines_with_one_line_descriptions() -> None:
    assert DEFAULT_ENGINE == "mlp-cell/1" and {"mlp-cell/1", NAME} <= set(engine_names())
    info = {e.name: e for e in engine_info()}
    assert info["mlp-cell/1"].default and not info["mlp-cell/1"].uses_models
    assert info[NAME].uses_models and not info[NAME].default
    assert all(e.description and "\n" not in e.description for e in info.values())
    assert engine_class(NAME) is TableTraceEngine


def test_listing_engines_never_imports_torch() -> None:
    code = "import sys\nfrom rememory.engine import engine_info\nengine_info()\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(UnknownEngineError, match=r"'nope/1'.*mlp-cell/1") as err:
        create_engine("nope/1")
    assert isinstance(err.value, ConfigError) and "rememory engines" in str(err.value)


def test_registering_checks_the_name_and_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from rememory import engine

    monkeypatch.setattr(engine, "_ENGINES", dict(engine._ENGINES))  # this test's registrations stay here
    for bad in ("", "two words"):
        with pytest.raises(ConfigError):
            register_engine(bad, "x:Y")
    with pytest.raises(ConfigError, match="module:Class"):
        register_engine("odd/1", "no-colon")
    register_engine("misnamed/1", "tests.enginekit:TableTraceEngine")  # names itself table-trace/1
    with pytest.raises(ConfigError, match="names itself"):
        create_engine("misnamed/1")


def test_the_cell_engine_takes_only_a_cell_config() -> None:
    with pytest.raises(ConfigError, match="CellConfig"):
        create_engine("mlp-cell/1", config={"params_per_byte": 3})


def test_an_engine_with_shared_models_fits_encodes_and_decodes_exact_bytes() -> None:
    models = InMemoryModels()
    eng = create_engine(NAME, models=models)
    assert eng.models is models and models.latest(NAME) is None
    keys = [f"key {i}" for i in range(len(TEXTS))]
    arts = eng.encode(keys, TEXTS)  # no model yet: the engine fits its first one
    assert models.latest_version(NAME) == 1 and {eng.model_version(a) for a in arts} == {1}
    v2 = eng.fit([b"zzzz"])
    assert v2 is not None and v2.version == 2 and v2.trained_on == 1 and models.latest_version(NAME) == 2
    newer = eng.encode(keys, TEXTS)
    assert {eng.model_version(a) for a in newer} == {2}
    # Old traces still decode with their own version; the batch decoder agrees with the single one.
    fresh = create_engine(NAME, models=models)
    items = [DecodeItem(a, k, len(t)) for a, k, t in zip(arts + newer, keys * 2, TEXTS * 2)]
    assert fresh.decode_batch(items) == TEXTS * 2
    assert arts[3].streams["uint8"].tobytes() != newer[3].streams["uint8"].tobytes()


def test_a_batch_decode_reports_each_failure_in_its_place() -> None:
    eng = create_engine(NAME)
    [good, bad] = eng.encode(["a", "b"], [b"first", b"second"])
    bad = Artifact(bad.engine, {**bad.config, "v": 7}, bad.streams)  # a model version that does not exist
    got = eng.decode_batch([DecodeItem(good, "a", 5), DecodeItem(bad, "b", 6), DecodeItem(good, "a", 4)])
    assert got[0] == b"first" and isinstance(got[1], IntegrityError) and "version 7" in str(got[1])
    assert isinstance(got[2], IntegrityError)  # the store's length disagrees with the trace's


def test_the_default_fit_means_no_shared_model() -> None:
    eng = create_engine("mlp-cell/1")
    assert eng.fit([b"text"]) is None and not eng.uses_models and eng.models is None
    art = Artifact("mlp-cell/1", {"n": 0, "h": 1}, {"int8": np.zeros(0, np.int8)})
    assert eng.model_version(art) is None
