"""Every reference model, in each Keras flavour its architecture exists in, exported and run through
``embed_runtime`` against Keras ``predict`` and ``compute_mask`` on fresh seeded ids.

Batch sizes 1, 7 and 256; lengths 1, 10 and 300 where the length is dynamic (the static length where it is
fixed); zero padding at the end, at the start and none. Float outputs within each model's ``atol``
(1e-5 absolute for all of them), masks exactly equal. A model that takes strings (``text``) is compared on
real text nobody here wrote instead: docstring lines of standard-library modules it was not trained on and
the multi-script lines of ``tests/export/data/multiscript.txt``; its ids equal Keras's id for id.
"""

from __future__ import annotations

import functools
import importlib
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
from exporters.verify import PADDINGS
from models._common import padded_ids

from .conftest import assert_parity

pytestmark = pytest.mark.tf

BATCH_SIZES = (1, 7, 256)
LENGTHS = (1, 10, 300)
TEXT_MODELS = [i.name for i in models.all_models() if i.text]
UNSEEN_MODULES = ("json", "collections", "functools", "itertools", "argparse", "typing", "logging", "email")
"""Standard-library modules whose docstrings no text model was trained on."""
MULTISCRIPT = Path(__file__).resolve().parents[1] / "export" / "data" / "multiscript.txt"


def _cases() -> list[Any]:
    cases = []
    for info in models.all_models():
        if info.text:  # Keras takes strings: test_text_matches_keras
            continue
        lengths = LENGTHS if info.dynamic_length else (None,)
        for flavour in info.flavours:
            for batch in BATCH_SIZES:
                for length in lengths:
                    for padding in PADDINGS:
                        label = (
                            f"{info.name}-{flavour}-b{batch}-" + (f"l{length}-" if length else "") + padding
                        )
                        cases.append(pytest.param(info.name, flavour, batch, length, padding, id=label))
    return cases


def fresh_ids(
    info: models.ModelInfo, batch: int, length: int | None, padding: str, case: str
) -> dict[str, np.ndarray]:
    """Seeded ids for every input of ``info``, a different stream per case; zero padding at ``padding``."""
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    return {i.name: padded_ids(rng, batch, i.length or length or 1, i.vocab, padding) for i in info.inputs}


@pytest.mark.parametrize(("name", "flavour", "batch", "length", "padding"), _cases())
def test_runtime_matches_keras(
    exported: Any, name: str, flavour: str, batch: int, length: int | None, padding: str
) -> None:
    """The runtime's outputs and masks equal Keras's on padded ids of this batch size and length."""
    model = exported(name, flavour)
    case = f"{name} {flavour} batch={batch} length={length} padding={padding}"
    feeds = fresh_ids(model.info, batch, length, padding, case)
    want = model.keras(feeds)
    assert set(want) == set(model.info.outputs) | set(model.info.masks)
    assert_parity(model.run(feeds), want, model.info.atol, case)


@pytest.mark.parametrize("flavour", models.info("seed").flavours)
def test_seed_example_shape(exported: Any, flavour: str) -> None:
    """The seed's own assertion: ``randint(1000, size=(32, 10))`` gives ``(32, 10, 64)``, in the runtime too."""
    model = exported("seed", flavour)
    ids = np.random.default_rng(0).integers(1000, size=(32, 10))
    keras_out = model.model.predict(ids, verbose=0)
    assert keras_out.shape == (32, 10, 64)
    out = model.run({"input_ids": ids})
    assert out["embedding"].shape == (32, 10, 64)
    np.testing.assert_allclose(out["embedding"], keras_out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", models.NAMES)
def test_graph_names_and_lengths(exported: Any, name: str) -> None:
    """Graph inputs, outputs and static lengths are the ones the model declares, in both flavours."""
    for flavour in models.info(name).flavours:
        model = exported(name, flavour)
        info = model.info
        assert [i.name for i in model.runtime.inputs] == [i.name for i in info.inputs]
        assert {o.name for o in model.runtime.outputs} == set(info.outputs) | set(info.masks)
        for spec, declared in zip(model.report.inputs, info.inputs):
            assert spec[1] == "int64"
            if declared.length is None:
                assert isinstance(spec[2][1], str), f"{name} {flavour}: {spec} should have a dynamic length"
            else:
                assert spec[2][1] == declared.length


@pytest.mark.parametrize("flavour", models.info("shared").flavours)
def test_shared_inputs_of_different_lengths(exported: Any, flavour: str) -> None:
    """The shared-Embedding model takes a short query and a long document in one call."""
    model = exported("shared", flavour)
    rng = np.random.default_rng(7)
    vocab = model.info.inputs[0].vocab
    feeds = {
        "query": padded_ids(rng, 7, 3, vocab, "end"),
        "document": padded_ids(rng, 7, 300, vocab, "start"),
    }
    assert_parity(model.run(feeds), model.keras(feeds), model.info.atol, f"shared {flavour} 3 vs 300")


@pytest.mark.parametrize("flavour", models.info("all_args").flavours)
def test_all_args_constraint_active_and_not_exported(exported: Any, flavour: str) -> None:
    """The max_norm constraint bound during training (every row norm <= 1, most at 1, from ~2.8 at
    initialisation) and no training-only argument reached the graph."""
    from models.all_args import train

    model = exported("all_args", flavour)
    table = np.asarray(model.model.get_layer("embedding").embeddings.numpy())
    norms = np.linalg.norm(table, axis=1)
    assert norms.max() <= train.MAX_NORM + 1e-5
    assert np.mean(norms > 0.99 * train.MAX_NORM) > 0.5
    untrained = train.build(flavour, seed=0)
    untrained(np.zeros((1, train.LENGTH), dtype=np.int64))
    assert np.linalg.norm(untrained.get_layer("embedding").embeddings.numpy(), axis=1).min() > train.MAX_NORM
    ops = set(model.report.op_counts)
    assert not ops & {"Abs", "Sqrt", "Square", "Pow", "Clip", "ReduceL1", "ReduceL2", "ReduceSumSquare"}


def test_tagger_time_distributed_in_tf_keras(exported: Any) -> None:
    """tf-keras exports the tagger's ``TimeDistributed(Dense)``; Keras 3 uses ``Dense`` on 3-D input."""
    tfk = exported("tagger", "tf_keras").model
    assert type(tfk.get_layer("tags")).__name__ == "TimeDistributed"
    k3 = exported("tagger", "keras3").model
    assert type(k3.get_layer("tags")).__name__ == "Dense"


@functools.cache
def real_texts(name: str) -> tuple[str, ...]:
    """Docstring lines of :data:`UNSEEN_MODULES` and the multi-script lines (accents, Cyrillic, Greek, CJK,
    emoji, combining marks, tabs, no-break spaces), with ``""``."""
    lines = importlib.import_module(f"models.{name}.train").docstring_lines(UNSEEN_MODULES)
    # not splitlines(): the file has U+2028, U+0085, \v and \f inside lines
    multiscript = MULTISCRIPT.read_text(encoding="utf-8").split("\n")[:-1]
    return (*lines, *multiscript, "")


def text_parity(model: Any, texts: list[str], where: str) -> None:
    """Keras's ids equal the runtime's id for id; outputs within ``atol``, masks equal."""
    want = model.model_module.keras_run(model.model, texts)
    ids, mask = model.runtime.tokenize(texts)
    np.testing.assert_array_equal(ids, want.pop("input.text"), err_msg=f"{where}: ids")
    np.testing.assert_array_equal(mask, want["output.mask"], err_msg=f"{where}: tokenize mask")
    want = {k.removeprefix("output."): v for k, v in want.items()}
    assert_parity(model.runtime.run(texts), want, model.info.atol, where)


@pytest.mark.parametrize("name", TEXT_MODELS)
@pytest.mark.parametrize("flavour", models.FLAVOURS)
@pytest.mark.parametrize("batch", (*BATCH_SIZES, None))
def test_text_matches_keras(exported: Any, name: str, flavour: str, batch: int | None) -> None:
    """Strings in: ids, outputs and masks equal Keras's on ``batch`` lines of real text drawn per case, or
    on every line (``None``: a few thousand)."""
    model = exported(name, flavour)
    texts = list(real_texts(name))
    if batch is not None:
        case = f"{name} {flavour} text batch={batch}"
        rng = np.random.default_rng(zlib.crc32(case.encode()))
        texts = [texts[i] for i in rng.choice(len(texts) - 1, size=batch, replace=False)]  # not "" alone
    text_parity(model, texts, f"{name} {flavour} {len(texts)} texts")
