"""A client finds its shard of the data the coordinator federates from the run spec alone: the
same split as the coordinator's, from the same file, or a one-line refusal."""

from __future__ import annotations

import datasets
import pytest

from fedlora.client.app import spec_split
from fedlora.common.config import load_config, ServerConfig
from fedlora.common.tasks import get_task
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.app import spec_data_fields

TASK = get_task("classification")


def _csv(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("text,label,user\n" + "".join(f"q{i},{'XYZ'[i % 3]},u{i % 4}\n" for i in range(90)))
    return f


def _spec(tmp_path, f=None, **data) -> tuple[ServerConfig, pb.RunSpec]:
    f = f or tmp_path / "mine.csv"
    if not f.exists():
        _csv(tmp_path)
    cfg = load_config(ServerConfig, None, {"data.dataset": str(f), "seed": 4, "clients": 3,
                                           **{f"data.{k}": v for k, v in data.items()}})
    plan = cfg.data.split_plan(3, cfg.seed)
    spec = pb.RunSpec(num_partitions=3, seed=cfg.seed, dirichlet_alpha=cfg.data.dirichlet_alpha,
                      test_fraction=cfg.data.test_fraction, label_names=["X", "Y", "Z"],
                      **spec_data_fields(cfg.data, plan, plan.scheme != "own"))
    return cfg, spec


@pytest.mark.parametrize("data", [{"partition": "iid"}, {"partition": "dirichlet"},
                                  {"partition": "column", "partition_column": "user"}])
def test_the_client_derives_the_coordinators_split(tmp_path, data):
    cfg, spec = _spec(tmp_path, **data)
    mine = spec_split(spec, TASK)
    theirs = TASK.federated_split(cfg.data.dataset, cfg.data.split_plan(3, cfg.seed), cfg.data)
    assert [s.tolist() for s in mine.shards] == [s.tolist() for s in theirs.shards]
    assert mine.test_idx.tolist() == theirs.test_idx.tolist()


def test_another_file_at_the_same_path_is_refused(tmp_path):
    _, spec = _spec(tmp_path, partition="iid")
    (tmp_path / "mine.csv").write_text("text,label\nsomething else,X\n")
    with pytest.raises(ValueError, match="is not the file the coordinator federates"):
        spec_split(spec, TASK)


def test_a_missing_file_is_refused_pointing_at_own_data(tmp_path):
    _, spec = _spec(tmp_path, partition="iid")
    (tmp_path / "mine.csv").unlink()
    with pytest.raises(ValueError, match="does not have; pass --data FILE"):
        spec_split(spec, TASK)


def test_own_data_runs_federate_nothing(tmp_path):
    _, spec = _spec(tmp_path)
    assert spec.dataset == "" and spec_split(spec, TASK) is None


def _folder(tmp_path):
    folder = tmp_path / "mine"
    datasets.load_dataset("csv", data_files=str(_csv(tmp_path)), split="train").save_to_disk(str(folder))
    return folder


def test_a_save_to_disk_folder_is_split_alike_on_both_sides(tmp_path):
    cfg, spec = _spec(tmp_path, _folder(tmp_path), partition="iid")
    theirs = TASK.federated_split(cfg.data.dataset, cfg.data.split_plan(3, cfg.seed), cfg.data)
    assert [s.tolist() for s in spec_split(spec, TASK).shards] == [s.tolist() for s in theirs.shards]


def test_a_changed_file_inside_a_federated_folder_is_refused(tmp_path):
    folder = _folder(tmp_path)
    _, spec = _spec(tmp_path, folder, partition="iid")
    (folder / "state.json").write_text((folder / "state.json").read_text() + " ")
    with pytest.raises(ValueError, match="is not the file the coordinator federates"):
        spec_split(spec, TASK)
