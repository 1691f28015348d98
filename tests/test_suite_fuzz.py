"""Property test of the suite parser: any TOML text gives a valid suite or one line.

Documents are drawn three ways: suite-shaped tables whose fields are sometimes plausible
and sometimes anything TOML can hold, the text of such a table with random edits, and
random text. Every outcome must be a ``Suite`` that can be planned (names, hashes,
pairs, meta-training configs), or a ``UsageError`` (``ConfigError`` is one) whose message
is a single non-empty line; never another exception.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from l2lbench.errors import UsageError
from l2lbench.spec.suite import SUITE_KEYS, Suite, parse_suite

DATASET_KINDS = ["mnist", "fashion-mnist", "kmnist", "cifar10-grey", "rotated-mnist", "permuted-mnist", "synthetic"]

# ------------------------------------------------------------------ TOML text writer
# tomllib reads TOML but cannot write it; inline tables and arrays are enough here.


def _key(key: str) -> str:
    return _string(key)


def _string(text: str) -> str:
    # A TOML basic string: escape the quote, the backslash and control characters.
    def escape(char: str) -> str:
        if char in '"\\':
            return "\\" + char
        return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char

    return '"' + "".join(map(escape, text)) + '"'


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def dumps(document: dict) -> str:
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in document.items())


# ------------------------------------------------------------------ strategies

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, -1, 3, 10, 10**6, 2**62]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
ANY = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)


def documents(wild: bool) -> st.SearchStrategy:
    """Suite tables: every value plausible, or (``wild``) any value anywhere now and then."""

    def maybe(plausible: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(*[plausible] * 5, ANY) if wild else plausible

    def table(required: dict, optional: dict) -> st.SearchStrategy:
        return st.fixed_dictionaries(
            {k: maybe(v) for k, v in required.items()}, optional={k: maybe(v) for k, v in optional.items()}
        )

    count = st.integers(-2, 40) if wild else st.integers(1, 40)
    unit = st.floats(0, 1) | st.sampled_from([0.0, 0.5, 1.0])
    dataset_fields = {
        "synthetic": {"n_train": count, "n_test": count, "size": st.integers(2, 40), "num_classes": st.integers(1, 12),
                      "seed": st.integers(0, 2**63 - 1)},
        "rotated-mnist": {"angle": st.floats(-400, 400)},
        "permuted-mnist": {"seed": st.integers(0, 2**63 - 1)},
        "cifar10-grey": {"weights": st.lists(unit, min_size=2, max_size=4), "crop": st.integers(0, 40)},
        "mnist": {}, "fashion-mnist": {}, "kmnist": {},
    }
    dataset = st.one_of(
        st.sampled_from(DATASET_KINDS),
        *[table({"kind": st.just(kind)}, {**fields, "mean": unit, "std": unit}) for kind, fields in dataset_fields.items()],
    )
    sizes = st.lists(count, max_size=3)
    learner = st.one_of(
        st.sampled_from(["mlp", "cnn"]),
        table({"kind": st.just("mlp")}, {"hidden": sizes, "activation": st.sampled_from(["relu", "tanh", "sigmoid"])}),
        table({"kind": st.just("cnn")}, {"channels": st.lists(count, min_size=1, max_size=6)}),
    )
    task_fields = {"steps": count, "batch_size": count, "eval_every": count, "eval_examples": count}
    task = table({"dataset": dataset}, {"learner": learner, **task_fields})
    meta = table(
        {"tasks": st.one_of(st.sampled_from(["same-as-test", "synthetic"]), st.lists(dataset | task, min_size=1, max_size=2))},
        {"trials": count, "unroll": count, "steps": count, "batch_size": count, "lr": st.floats(0, 1),
         "clip": st.floats(0, 2), "param_noise": st.booleans(), "seed": count, "noise_scales": st.lists(unit, max_size=3)},
    )
    names = st.sampled_from(["sgd", "adam", "momentum", "lstm", "mtl2l", "no-such-optimizer", ""])
    optimizer = st.one_of(
        names,
        table({"entry": names}, {"lr": st.floats(0, 1), "name": TEXT, "meta_training": meta,
                                 "tasks": st.lists(st.sampled_from(["synthetic", "mnist*", "nothing"]), min_size=1, max_size=2)}),
    )
    suite = table(
        {"optimizers": st.lists(optimizer, min_size=1, max_size=4), "tasks": st.lists(task, min_size=1, max_size=3)},
        {"description": TEXT, "seeds": count, "defaults": table({}, task_fields), "meta_training": meta},
    )
    if not wild:
        return suite

    @st.composite
    def with_unknown_key(draw) -> dict:
        document = draw(suite)
        if draw(st.integers(1, 20)) == 20:
            document[draw(TEXT.filter(lambda k: k not in SUITE_KEYS))] = draw(ANY)
        return document

    return with_unknown_key()


PLAUSIBLE, WILD = documents(wild=False), documents(wild=True)


@st.composite
def edited(draw) -> str:
    """The text of a suite with a few random deletions and insertions."""
    text = dumps(draw(PLAUSIBLE))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        else:
            text = text[:at] + draw(st.text(st.sampled_from('[]{}"=,.\n\\#' + "ab1 "), min_size=1, max_size=4) | TEXT) + text[at:]
    return text


DOCUMENTS = st.one_of(PLAUSIBLE.map(dumps), WILD.map(dumps), edited(), st.text(max_size=200))

VALID = dumps({
    "seeds": 2,
    "optimizers": ["sgd", {"entry": "lstm", "tasks": ["synthetic"]}],
    "tasks": [{"dataset": {"kind": "synthetic", "n_train": 64}, "steps": 5}],
    "meta_training": {"tasks": "same-as-test", "trials": 1},
})


def check(text: str) -> Suite | UsageError:
    try:
        suite = parse_suite(text, name="fuzz", source="fuzz.toml")
    except UsageError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, repr(message)
        assert message.startswith("fuzz.toml: "), message
        return exc
    # Whatever parses must also plan: derived names, hashes, pairs, meta-training.
    assert isinstance(suite, Suite) and suite.seeds > 0 and suite.tasks and suite.optimizers
    for task, optimizer in suite.pairs():
        assert task.name and task.hash and optimizer.name
        suite.meta_training_for(optimizer, task)
    return suite


def test_the_writer_round_trips_a_known_suite():
    suite = check(VALID)
    assert isinstance(suite, Suite) and len(suite.pairs()) == 2


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(DOCUMENTS)
@example('optimizers = ["sgd"]\ntasks = [{dataset = {kind = [1]}}]\n')
@example('optimizers = [{entry = "sgd", tasks = ["a\\nb"]}]\ntasks = [{dataset = "synthetic"}]\n')
def test_any_document_is_a_suite_or_one_line(text):
    check(text)
