"""One source of truth per default: where a dataclass default and a YAML value both exist, they
are the same number. Backend-specific values live in ``conf/llm/*.yaml``; the dataclass
defaults equal the default backend's (``llm=local``), so code that builds a config without
Hydra gets what ``autodata-generate`` gets."""

from __future__ import annotations

from dataclasses import fields

import pytest

from inner.config import BackendConfig, GateConfig, InnerConfig, RolesConfig
from inner.evaluator.scoring import RubricPolicyConfig
from tests.conftest import compose_config


@pytest.mark.parametrize("role", [f.name for f in fields(RolesConfig)])
def test_role_defaults_equal_the_default_backend(role):
    assert getattr(RolesConfig(), role) == getattr(compose_config().llm.roles, role)


def test_backend_gate_rubric_and_inner_defaults_equal_the_default_groups():
    cfg = compose_config()
    assert BackendConfig() == cfg.llm.backend
    assert GateConfig() == cfg.gate
    assert RubricPolicyConfig() == cfg.rubric
    assert InnerConfig() == cfg.inner
