"""Threads per process (probing/threads.py): ranks of one launch share the cores; the user's choice wins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editing.cli import main
from probing.errors import MelodiaError
from probing.threads import configure_threads, parent_environment, threads_for_process

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env, expected", [
    ({}, None),                                                   # alone: torch's default
    ({"WORLD_SIZE": "1"}, None),
    ({"WORLD_SIZE": "2"}, 8),                                     # RANK/WORLD_SIZE by hand
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, 4),            # two nodes of four: this node's four share
    ({"WORLD_SIZE": "64"}, 1),                                    # never below one
    ({"WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, None),          # the user's (torch reads it itself)
    ({"WORLD_SIZE": "2", "OMP_NUM_THREADS": "3", "MELODIA_THREADS": "5"}, 5),
])
def test_threads_are_the_cores_shared_by_a_launchs_processes_unless_the_user_chose(env, expected):
    assert threads_for_process(env, cores=16) == expected


@pytest.mark.parametrize("env", [{"MELODIA_THREADS": "0"}, {"MELODIA_THREADS": "two"}, {"WORLD_SIZE": "x"}])
def test_bad_settings_are_named(env):
    with pytest.raises(MelodiaError, match=next(iter(env))):
        threads_for_process(env, cores=16)


def test_configure_threads_sets_torch_and_the_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MELODIA_THREADS", "2")  # an explicit count wins over it, also for later calls
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert configure_threads() == 1  # what capture and bench call again: the explicit count holds
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("parent, expected", [({}, 8), ({"OMP_NUM_THREADS": "1"}, None)])
def test_torchruns_default_of_one_thread_is_not_the_users_choice(parent, expected):
    env = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x", "OMP_NUM_THREADS": "1"}
    assert threads_for_process(env, cores=16, parent_env=parent) == expected  # the user's own 1 is kept


def test_the_parent_environment_is_read_where_the_platform_allows():
    parent = parent_environment()
    assert parent is None or (isinstance(parent, dict) and all(isinstance(k, str) for k in parent))


def test_a_rank_started_by_hand_takes_its_share_of_the_cores():
    code = ("import torch; from probing.threads import configure_threads, available_cores; configure_threads(); "
            "print(torch.get_num_threads(), available_cores())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MELODIA_THREADS")}
    env.update(RANK="1", WORLD_SIZE="2", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads, cores = map(int, out.stdout.split())
    assert threads == max(1, cores // 2)


def test_the_cli_refuses_a_thread_count_below_one(capsys):
    assert main(["--threads", "0", "layers", "--model", "tiny"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err
