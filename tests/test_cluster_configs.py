"""The shipped cluster configs parse and satisfy Ray's autoscaler schema (or KubeRay's shape)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
SCHEMA = json.loads(files("ray.autoscaler").joinpath("ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_autoscaler_config_matches_ray_schema(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    jsonschema.validate(config, SCHEMA)


def test_schema_rejects_a_broken_config():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"cluster_name": "x", "provider": {"type": "aws"}, "max_wrkers": 2}, SCHEMA)


def test_kuberay_cluster_shape():
    cluster = yaml.safe_load((CLUSTER / "kuberay.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
