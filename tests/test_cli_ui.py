"""`automix ui`: the server it starts goes away with it (signals reach the server's whole process
group: MLflow's workers too), the tools run with this Python, and the front's address opens a
saved view that shows the objectives' columns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from automix.cli import main
from automix.commands import ui
from automix.study import tracking
from automix.study.tracking import Tracker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# a server like `mlflow ui`: the process started spawns a worker that holds the port, and dies on
# SIGTERM without stopping it (the worker would go on serving)
SERVER = textwrap.dedent("""
    import socket, subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", '''
    import socket, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT)); s.listen()
    while True: time.sleep(1)
    '''.replace("PORT", sys.argv[1])])
    time.sleep(3600)
""")


def test_stopping_ui_stops_the_server_and_its_workers(tmp_path):
    port = free_port()
    runner = textwrap.dedent(f"""
        import sys
        from automix.commands.ui import serve
        sys.exit(serve([sys.executable, "-c", {SERVER!r}, "{port}"], stop_timeout=10))
    """)
    proc = subprocess.Popen([sys.executable, "-c", runner])
    try:
        wait_until(lambda: listening(port), 60, "the stand-in server's worker to listen")
        pgid = int(next(p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        wait_until(lambda: not listening(port), 30, "the port to be free")
        wait_until(lambda: not group_alive(pgid), 30, "the server's process group to be gone")
    finally:
        proc.kill()


def _ppid(p: Path) -> int:
    try:
        stat = (p / "stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rindex(")") + 2:].split()[1])


@pytest.mark.slow
def test_killing_automix_ui_frees_the_mlflow_port(tmp_path):
    """The real thing: `automix ui` on a study store, the MLflow UI answering, SIGTERM to automix
    ui, and the port free again with no process of the server's group left."""
    uri = f"sqlite:///{tmp_path}/m.db"
    Tracker(uri, "q")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "automix", "ui", "--tracking-uri", uri, "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port), 300, "the MLflow UI to listen")
        server = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        wait_until(lambda: not listening(port), 60, "the port to be free")
        wait_until(lambda: not group_alive(server), 60, "the MLflow server's workers to be gone")
    finally:
        proc.kill()


def test_tools_run_with_this_python(monkeypatch, tmp_path):
    args = build_args(["ui", "--tracking-uri", "sqlite:////x/m.db"])
    assert ui.command(args)[:3] == [sys.executable, "-m", "mlflow"]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("")
    script = fake / "optuna-dashboard"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")  # a virtual environment that is not activated
    assert ui.command(build_args(["ui", "--optuna"]))[0] == str(script)
    script.unlink()
    cmd = ui.command(build_args(["ui", "--optuna", "--storage", "sqlite:////x/o.db"]))
    assert cmd[0] == str(fake / "python") and "optuna_dashboard._cli" in cmd[2] and cmd[3] == "sqlite:////x/o.db"


def build_args(argv: list[str]):
    from automix.cli import build_parser

    return build_parser().parse_args(argv)


def test_front_link_opens_a_saved_view_with_the_metric_columns(tmp_path, capsys):
    assert ui.FRONT_VIEW == tracking.FRONT_VIEW
    uri = f"sqlite:///{tmp_path}/m.db"
    t = Tracker(uri, "quick")
    t.log_study_config({"name": "quick", "objectives": {"quality": "perplexity"}})
    assert main(["ui", "--tracking-uri", uri, "--port", "5077", "--dry-run"]) == 0
    link = next(line.split("quick: ", 1)[1] for line in capsys.readouterr().out.splitlines() if "quick: " in line)
    page, query = link.split("?", 1)
    assert page == f"http://127.0.0.1:5077/#/experiments/{t.experiment_id}/runs"
    assert {k: v[0] for k, v in parse_qs(query).items()} == {"workflowType": "machine_learning",
                                                             "viewStateShareKey": "automix-pareto-front"}
    view = json.loads(t.client.get_experiment(t.experiment_id).tags["mlflow.sharedViewState.automix-pareto-front"])
    assert view["searchFilter"] == "tags.pareto = 'true'" and view["orderByKey"] == "metrics.`memory_mib`"
    assert {"metrics.`perplexity`", "metrics.`memory_mib`", "tags.`method`"} <= set(view["selectedColumns"])
