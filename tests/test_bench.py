"""`vlpeft bench` and `vlpeft report`: spec validation, the four protocols on a tiny generated world,
resume after a kill, failure isolation, claims, the Ray executor, and the report's arithmetic."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY_WORLD_CLASSES

TEXTURES = ("striped", "dotted", "checkered")


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory) -> Path:
    """WorldShapes (3 classes: 3 train, 1 val, 4 test each), its V2 and A shifts (A on 2 of the 3
    classes, as ImageNet-A holds 200 of ImageNet's classes) and a 3-class WorldTextures."""
    from vlpeft.world.datasets import world_set, write_world_set

    root = tmp_path_factory.mktemp("bench-world")
    sets = {
        "WorldShapes": (TINY_WORLD_CLASSES, (3, 1, 4)),
        "WorldShapesV2": (TINY_WORLD_CLASSES, (0, 0, 3)),
        "WorldShapesA": (TINY_WORLD_CLASSES[1:], (0, 0, 3)),
        "WorldTextures": (TEXTURES, (0, 0, 3)),
    }
    for name, (classes, sizes) in sets.items():
        ws = dataclasses.replace(world_set(name), classes=classes)
        write_world_set(ws, root / ws.folder, 0, per_class=sizes)
    return root


def write_spec(path: Path, **spec) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def few_shot_spec(tmp_path: Path, root: Path, **extra) -> Path:
    spec = {
        "name": "tiny",
        "protocol": "few-shot",
        "backbones": ["embedded"],
        "root": str(root),
        "datasets": ["WorldShapes"],
        "methods": ["zero-shot", "linear-probe"],
        "shots": [1, 2],
        "seeds": [1, 2],
        "device": "cpu",
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    return write_spec(tmp_path / "spec.yaml", **spec)


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stdout, stderr)."""
    from vlpeft.cli import main

    monkeypatch.setattr(sys, "argv", ["vlpeft", "-q", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- the spec ------------------------------------------------------------------------------------


BAD_SPECS = [
    ("protocol: few-shot\nmethods:\n\t- coop\n", "line 4, column 1"),
    ("methdos: [coop]\n", "Did you mean 'methods'"),
    ("methods: [cop]\ndatasets: [WorldShapes]\n", "Did you mean 'coop'"),
    ("methods: [coop]\ndatasets: [WorldShape]\n", "Did you mean 'WorldShapes'"),
    ("methods: [{method: coop, set: {n_ctxx: 4}}]\ndatasets: [WorldShapes]\n", "Did you mean 'n_ctx'"),
    ("methods: []\ndatasets: [WorldShapes]\n", "'methods' is empty"),
    ("methods: [coop]\ndatasets: [WorldShapes]\nshots: [0]\n", "'shots' must hold integers >= 1"),
    ("methods: [coop]\ndatasets: [WorldShapes]\nprotocol: zero-to-hero\n", "protocol must be one of"),
    ("methods: [linear-probe]\ndatasets: [WorldShapes]\nprotocol: base-to-new\n", "learn weights"),
    ("methods: [coop]\nprotocol: cross-dataset\nsource: WorldShapes\n", "needs 'source' and 'targets'"),
    ("methods: [coop]\ndatasets: [{name: WorldShapes, root: /nonexistent/data}]\n", "is not a directory"),
    ("methods: [coop]\ndatasets: [WorldShapes]\nresources: {gpus: 1}\n", "num_cpus and num_gpus"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_specs_are_clear_errors_and_write_nothing(
    text, message, tmp_path, bench_root, monkeypatch, capsys
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"root: {bench_root}\n" + text)
    code, _, err = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "out")
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_plan_lists_the_grid_writes_nothing_and_counts_the_forwards_a_run_makes(
    tmp_path, bench_root, monkeypatch, capsys
):
    spec = few_shot_spec(tmp_path, bench_root)
    code, out, _ = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "out", "--plan")
    text = " ".join(out.split())
    assert code == 0 and "5 runs (0 done, 5 to run)" in text  # zero-shot once, linear-probe 2 shots x 2 seeds
    planned = int(re.search(r"feature cache ([\d,]+)", text).group(1).replace(",", ""))
    assert 12 < planned <= 12 + 9 + 3  # the 12 test images, then each sampled train and val image once
    assert not (tmp_path / "out").exists()
    code, out, _ = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "out")
    assert code == 0 and f"{planned} image-encoder forwards" in " ".join(out.split())


# ---- the protocols -------------------------------------------------------------------------------


def test_few_shot_grid_equals_hand_typed_train_and_resumes(tmp_path, bench_root, monkeypatch, capsys):
    spec = few_shot_spec(tmp_path, bench_root)
    out = tmp_path / "out"
    code, text, _ = cli(monkeypatch, capsys, "bench", spec, "--out", out)
    assert code == 0 and "5 runs: 5 done now" in " ".join(text.split())
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 5 and set(frame["split"]) == {"test"} and frame["accuracy"].between(0, 100).all()
    assert frame.equals(pd.read_csv(out / "results.csv").astype(frame.dtypes.to_dict()))
    probe = frame[frame["method"] == "linear-probe"]
    row = probe[(probe["shots"] == 2) & (probe["seed"] == 2)].iloc[0]
    train = ["train", "--method", "linear-probe", "--model", "embedded", "--dataset", "WorldShapes", "--root"]
    options = ["--shots", 2, "--seed", 2, "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    code, _, _ = cli(monkeypatch, capsys, *train, bench_root, *options, "--out", tmp_path / "by-hand")
    by_hand = json.loads((tmp_path / "by-hand" / "result.json").read_text())
    assert code == 0 and by_hand["metrics"]["accuracy"] == row["accuracy"]
    code, text, _ = cli(monkeypatch, capsys, "bench", spec, "--out", out)
    assert code == 0 and "0 done now, 5 already done" in " ".join(text.split())


def run_protocol(tmp_path, bench_root, monkeypatch, capsys, **spec) -> pd.DataFrame:
    path = few_shot_spec(tmp_path, bench_root, **spec)
    code, _, err = cli(monkeypatch, capsys, "bench", path, "--out", tmp_path / "out")
    assert code == 0, err
    return pd.read_csv(tmp_path / "out" / "results.csv")


COOP = {"method": "coop", "name": "CoOp", "set": {"epochs": 2, "n_ctx": 2}}


def test_base_to_new_trains_on_base_and_evaluates_new(tmp_path, bench_root, monkeypatch, capsys):
    frame = run_protocol(tmp_path, bench_root, monkeypatch, capsys, protocol="base-to-new",
                         methods=["zero-shot", COOP], shots=[2], seeds=[1])  # fmt: skip
    assert sorted(frame["split"]) == ["base", "base", "new", "new"]
    report = (tmp_path / "out" / "report.md").read_text()
    base, new = (
        frame[(frame["name"] == "CoOp") & (frame["split"] == s)]["accuracy"].iloc[0] for s in ("base", "new")
    )
    assert f"{2 * base * new / (base + new):.1f}" in report and "HM" in report
    runs = json.loads(next((tmp_path / "out" / "runs").glob("*coop*/evals/new/result.json")).read_text())
    assert runs["counts"]["classes"] == 1  # 3 classes: base = the first 2, new = the last


def test_cross_dataset_and_domain_generalisation(tmp_path, bench_root, monkeypatch, capsys):
    common = {"datasets": None, "source": "WorldShapes", "shots": [2], "seeds": [1]}
    frame = run_protocol(
        tmp_path / "x", bench_root, monkeypatch, capsys, protocol="cross-dataset", targets=["WorldTextures"],
        methods=["zero-shot", COOP], **common,
    )  # fmt: skip
    assert set(zip(frame["split"], frame["dataset"], strict=True)) == {
        ("source", "WorldShapes"),
        ("target", "WorldTextures"),
    }
    dg = run_protocol(
        tmp_path / "d", bench_root, monkeypatch, capsys, protocol="domain-generalisation",
        targets=["WorldShapesV2", "WorldShapesA"], methods=["zero-shot", "linear-probe"], **common,
    )  # fmt: skip
    assert len(dg) == 6 and set(dg[dg["split"] == "target"]["dataset"]) == {"WorldShapesV2", "WorldShapesA"}
    result = json.loads(
        next(
            (tmp_path / "d" / "out" / "runs").glob("*linear-probe*/evals/WorldShapesA/result.json")
        ).read_text()
    )
    assert (
        result["classes"] == "subset" and result["counts"]["classes"] == 2
    )  # the source classifier's columns


def test_subset_columns_follow_the_target_classes():
    from vlpeft.engine.runner import subset_columns
    from vlpeft.errors import ConfigError

    assert subset_columns(["a", "b", "c"], ["c", "a"], "T") == [2, 0]
    with pytest.raises(ConfigError, match="not trained on"):
        subset_columns(["a", "b"], ["z"], "T")


# ---- faults, resume, claims ----------------------------------------------------------------------


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, bench_root, monkeypatch, capsys):
    from vlpeft.engine import runner

    real = runner.run_train

    def flaky(cfg, *args, **kwargs):
        if cfg.method == "linear-probe" and cfg.seed == 2:
            raise RuntimeError("simulated crash")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(runner, "run_train", flaky)
    spec = few_shot_spec(tmp_path, bench_root)
    code, _, err = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "out")
    assert code == 2 and "2 runs failed" in err and "simulated crash" in err and "Traceback" not in err
    assert len(list((tmp_path / "out" / "failed").glob("*.json"))) == 2
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 3
    assert not list((tmp_path / "out" / "runs").glob(".tmp-*"))  # nothing half-written
    monkeypatch.setattr(runner, "run_train", real)
    code, out, _ = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "out")
    assert code == 0 and "2 done now, 3 already done" in " ".join(out.split())
    assert not list((tmp_path / "out" / "failed").glob("*.json"))


def test_another_specs_directory_is_refused_unless_forced(tmp_path, bench_root, monkeypatch, capsys):
    out = tmp_path / "out"
    cli(
        monkeypatch, capsys, "bench", few_shot_spec(tmp_path, bench_root, methods=["zero-shot"]), "--out", out
    )
    other = few_shot_spec(tmp_path, bench_root, methods=["zero-shot", "linear-probe"], shots=[1], seeds=[1])
    code, _, err = cli(monkeypatch, capsys, "bench", other, "--out", out)
    assert code == 2 and "holds the results of another spec" in " ".join(err.split())
    code, text, _ = cli(monkeypatch, capsys, "bench", other, "--out", out, "--force")
    assert code == 0 and "1 done now, 1 already done" in " ".join(text.split())
    moved = few_shot_spec(tmp_path, bench_root, methods=["zero-shot", "linear-probe"], shots=[1], seeds=[1],
                          resources={"num_cpus": 4, "num_gpus": 1}, batch_size=8)  # fmt: skip
    code, text, _ = cli(monkeypatch, capsys, "bench", moved, "--out", out)  # where it runs is not the grid
    assert code == 0 and "0 done now, 2 already done" in " ".join(text.split())


def test_a_claimed_run_is_left_to_its_owner_and_a_dead_owner_releases_it(tmp_path, bench_root):
    from vlpeft.bench import load_spec
    from vlpeft.bench.grid import Settings, claim, execute

    spec = load_spec(few_shot_spec(tmp_path, bench_root, methods=["zero-shot"]))
    run, out = spec.runs()[0], tmp_path / "out"
    settings = Settings.of(spec, out, None)
    with claim(out, run.key) as mine:
        assert mine and execute(run, settings)["status"] == "busy"
    hold = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"
    )
    lock = out / "locks" / f"{run.key}.lock"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert execute(run, settings)["status"] == "busy"
    holder.kill()
    holder.wait()
    assert execute(run, settings)["status"] == "done"


def test_a_grid_killed_with_sigkill_resumes_where_it_stopped(tmp_path, bench_root):
    spec = few_shot_spec(tmp_path, bench_root, shots=[1, 2, 3], seeds=[1, 2, 3])  # 10 runs
    out = tmp_path / "out"
    env = {**os.environ, "VLPEFT_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "vlpeft", "-q", "bench", str(spec), "--out", str(out), "--no-report"]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and len([p for p in (out / "runs").glob("*") if not p.name.startswith(".")]) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in (out / "runs").glob("*") if not p.name.startswith(".")}
    assert 3 <= len(finished) < 10
    assert all((out / "runs" / name / "result.json").is_file() for name in finished)  # whole runs only
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    text = " ".join(resumed.stdout.split())
    assert f"{10 - len(finished)} done now, {len(finished)} already done" in text
    assert not list((out / "runs").glob(".tmp-*")) and len(pd.read_csv(out / "results.csv")) == 10


def test_ray_executor_on_a_local_instance_lands_the_same_results(tmp_path, bench_root, monkeypatch, capsys):
    if os.environ.get("CI") is None:
        pytest.importorskip("ray")
    spec = few_shot_spec(tmp_path, bench_root, shots=[1], seeds=[1])
    cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "local")
    code, text, err = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "ray", "--executor", "ray")
    import ray

    ray.shutdown()
    assert code == 0 and "2 done now" in " ".join(text.split()), err
    columns = ["method", "dataset", "shots", "seed", "accuracy"]
    local, remote = (pd.read_csv(tmp_path / d / "results.csv")[columns] for d in ("local", "ray"))
    pd.testing.assert_frame_equal(local.sort_values(columns).reset_index(drop=True),
                                  remote.sort_values(columns).reset_index(drop=True))  # fmt: skip


def test_an_unreachable_ray_address_is_a_clear_error(tmp_path, bench_root, monkeypatch, capsys):
    pytest.importorskip("ray")
    spec = few_shot_spec(tmp_path, bench_root)
    code, _, err = cli(
        monkeypatch,
        capsys,
        "bench",
        spec,
        "--out",
        tmp_path / "out",
        "--executor",
        "ray",
        "--address",
        "127.0.0.1:9",
    )
    assert (
        code == 2
        and "Cannot reach the Ray cluster" in " ".join(err.split())
        and not (tmp_path / "out").exists()
    )


SHIPPED = {  # spec -> runs: the papers' grids
    "coop-fewshot.yaml": 11 * (1 + 3 * 5 * 3),
    "cache-models-fewshot.yaml": 2 * 11 * (1 + 9 * 5 * 3),
    "base-to-new.yaml": 11 * (1 + 7 * 3),
    "cross-dataset.yaml": 1 + 4 * 3,
    "domain-generalisation.yaml": 1 + 7 * 3,
    "demo.yaml": 6 * (1 + 12 * 3),
}


@pytest.mark.parametrize(("name", "runs"), SHIPPED.items())
def test_shipped_specs_are_valid_and_expand_to_the_papers_grids(name, runs, tmp_path, monkeypatch):
    from importlib.resources import files

    from vlpeft.bench import load_spec

    monkeypatch.setenv("DATA", str(tmp_path))
    path = tmp_path / name
    path.write_text((files("vlpeft.bench") / "specs" / name).read_text())
    assert len(load_spec(path).runs()) == runs


def test_worker_processes_land_the_same_results_and_encode_each_image_once(
    tmp_path, bench_root, monkeypatch, capsys
):
    spec = few_shot_spec(tmp_path, bench_root)
    code, text, _ = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "one")
    one = int(re.search(r"([\d,]+) image-encoder forwards", " ".join(text.split())).group(1).replace(",", ""))
    spec = few_shot_spec(tmp_path, bench_root, cache_dir=str(tmp_path / "cache2"))
    code, text, err = cli(monkeypatch, capsys, "bench", spec, "--out", tmp_path / "two", "--jobs", "2")
    assert code == 0, err
    two = int(re.search(r"([\d,]+) image-encoder forwards", " ".join(text.split())).group(1).replace(",", ""))
    assert two == one  # the workers wait for each other's extraction instead of repeating it
    columns = ["method", "shots", "seed", "accuracy"]
    a, b = (pd.read_csv(tmp_path / d / "results.csv")[columns].sort_values(columns) for d in ("one", "two"))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_progress_bars_of_the_runs_stay_off_under_the_grids_bar(tmp_path, bench_root, monkeypatch, capsys):
    """On a terminal the grid shows its bar; a run's own bars (extraction, epochs) would be a second live
    display fighting it for the terminal, so they are off while the grid runs and back on after."""
    from vlpeft.cli import main
    from vlpeft.engine import runner
    from vlpeft.utils import progress_enabled, set_progress

    seen = []
    real = runner.run_train
    monkeypatch.setattr(runner, "run_train", lambda *a, **k: seen.append(progress_enabled()) or real(*a, **k))
    monkeypatch.delenv("VLPEFT_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # as on a terminal (no -q)
    spec = few_shot_spec(tmp_path, bench_root, methods=["zero-shot", "linear-probe"], shots=[1], seeds=[1])
    monkeypatch.setattr(sys, "argv", ["vlpeft", "bench", str(spec), "--out", str(tmp_path / "out")])
    try:
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code in (0, None) and progress_enabled()  # restored after the grid
    finally:
        set_progress(None)
    assert seen == [False, False] and "2 done now" in " ".join(capsys.readouterr().out.split())


def test_a_dead_ray_task_is_recorded_as_a_failed_run(tmp_path, bench_root):
    """A task whose worker dies (node lost, out of memory) raises in ray.get: recorded, the grid goes on."""
    from vlpeft.bench import load_spec
    from vlpeft.bench.grid import Settings, _ray_results

    spec = load_spec(few_shot_spec(tmp_path, bench_root))
    runs = spec.runs()[:2]

    class FakeRay:
        def remote(self, fn):
            class Task:
                def options(self, **kwargs):
                    return self

                def remote(self, run, settings):
                    return run.key

            return Task()

        def wait(self, pending, num_returns):
            return pending[:1], pending[1:]

        def get(self, ref):
            if ref == runs[0].key:
                raise RuntimeError("worker died")
            return {"key": ref, "status": "done"}

    results = list(_ray_results(FakeRay(), runs, Settings.of(spec, tmp_path / "out", None), spec))
    assert results[0] == {
        "key": runs[0].key,
        "status": "failed",
        "error": "Ray task died: RuntimeError: worker died",
    }
    assert results[1] == {"key": runs[1].key, "status": "done"}
