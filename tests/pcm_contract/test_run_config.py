"""The run configuration is declared once (pcm_contract.run_config) and everything agrees with it:
the proto's RunConfig message field by field, the HTTP bodies, the core config and its checks,
the codec and the trainer's choices."""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from pcm_contract import codec
from pcm_contract.errors import InvalidArgument
from pcm_contract.gen.pcm.v1 import selector_pb2 as pb
from pcm_contract.models import RunConfigBody, RunConfigOut
from pcm_contract.run_config import (
    BUDGET_OBJECTIVES,
    BUDGET_RULES,
    KEEP_RULES,
    MODES,
    PHASE_WEIGHTINGS,
    RUN_CONFIG_FIELDS,
    SCORES,
    WEIGHTINGS,
    RunConfigSchema,
    field_type,
    schema_fields,
)
from selector_service.core import RunConfig

# The proto scalar types a schema field's Python type may travel as.
WIRE_TYPES = {
    int: {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
          FieldDescriptor.TYPE_UINT64},
    float: {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT},
    str: {FieldDescriptor.TYPE_STRING},
}


def test_the_proto_message_and_the_schema_agree_field_by_field() -> None:
    wire = pb.RunConfig.DESCRIPTOR.fields
    assert [f.name for f in wire] == list(RUN_CONFIG_FIELDS), (
        "protos/pcm/v1/selector.proto's RunConfig and pcm_contract.run_config.RunConfigSchema "
        "name different fields (or in a different order)")
    for wire_field, f in zip(wire, schema_fields(), strict=True):
        assert wire_field.type in WIRE_TYPES[field_type(f)], (
            f"{f.name}: proto type {wire_field.type} for a {field_type(f).__name__} field")
        assert wire_field.has_presence, f"{f.name}: must be `optional` (unset keeps the stored)"


def test_every_field_has_help_text_and_a_type() -> None:
    for f in schema_fields():
        assert f.metadata["help"].strip(), f"{f.name} has no help text"
        assert field_type(f) in (int, float, str)
        assert isinstance(f.default, field_type(f)), f"{f.name}: default of the wrong type"


def test_the_derived_models_have_exactly_the_schemas_fields() -> None:
    names = set(RUN_CONFIG_FIELDS)
    assert set(RunConfigBody.model_fields) == names
    assert set(RunConfigOut.model_fields) == names
    assert {f.name for f in fields(RunConfig)} == names
    assert issubclass(RunConfig, RunConfigSchema)
    assert RunConfig().to_dict() == {f.name: f.default for f in schema_fields()}


def test_the_body_takes_bounds_choices_and_help_from_the_schema() -> None:
    for f in schema_fields():
        body_field = RunConfigBody.model_fields[f.name]
        assert body_field.default is None, f"{f.name}: omitted must mean 'keep the stored value'"
        assert f.metadata["help"] in (body_field.description or "")
        constraints = {type(m).__name__.lower(): m for m in body_field.metadata}
        for bound in ("ge", "gt", "le", "lt"):
            if f.metadata[bound] is not None:
                assert getattr(constraints[bound], bound) == f.metadata[bound], (f.name, bound)
        if f.metadata["choices"]:
            literal = next(a for a in typing.get_args(body_field.annotation) if a is not None)
            assert typing.get_args(literal) == f.metadata["choices"]


def _outside(f) -> list[object]:  # values the schema refuses for field f
    meta = f.metadata
    if meta["choices"]:
        return ["no-such-choice", None]
    bad: list[object] = [True, "1"]
    bad += [meta[k] - 1 for k in ("ge",) if meta[k] is not None]
    bad += [meta[k] for k in ("gt", "lt") if meta[k] is not None]
    bad += [meta[k] + 1 for k in ("le",) if meta[k] is not None]
    if field_type(f) is float:
        bad += [float("nan"), float("inf")]
    return bad


@pytest.mark.parametrize("f", schema_fields(), ids=lambda f: f.name)
def test_the_core_checks_are_the_schemas(f) -> None:
    for value in _outside(f):
        bad: dict[str, Any] = {f.name: value}
        with pytest.raises(InvalidArgument) as exc:
            RunConfig(**bad)
        assert exc.value.field == f.name
    good: dict[str, Any] = {f.name: f.default}
    RunConfig(**good)


def test_the_codec_carries_every_schema_field() -> None:
    config = RunConfig(phases=7, keep_fraction=0.5, eps=0.0, eta=0.3, weighting="ht", seed=9,
                       feature_dim=3, mode="random", score="action", budget=2, score_window=5,
                       keep_rule="paper").to_dict()
    msg = codec.run_config_to_proto(config)
    assert codec.run_config_changes(msg) == config


def test_the_trainer_validates_against_the_schemas_choices() -> None:
    config = pytest.importorskip("trainer_client.train.config")
    assert config.ALGOS == MODES  # --algo is the run's mode
    assert isinstance(config.TrainConfig().selection, RunConfigSchema)  # its flags: the schema's
    for name, value in (("weighting", "ht2"), ("score", "variance"), ("keep_fraction", 0.0)):
        with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
            config.TrainConfig(selection=RunConfigSchema(**{name: value}))
    assert {f.name: f.metadata["choices"] for f in schema_fields() if f.metadata["choices"]} == {
        "weighting": WEIGHTINGS, "mode": MODES, "score": SCORES, "budget_rule": BUDGET_RULES,
        "keep_rule": KEEP_RULES, "phase_weighting": PHASE_WEIGHTINGS,
        "budget_objective": BUDGET_OBJECTIVES}
