"""Optuna studies on a real PostgreSQL server started by the project (`bash run.sh db`, src/db.py): independent
workers forming one study, the child experiment written from the database alone, kill -9 of a worker mid-trial,
the server restarted mid-study, and bad URLs.

Each worker is a separate process with its own output root, as on separate machines: they share only the
database. The server package is installed with apt when missing (as root). Outside CI these tests are
skipped, with the reason, only when it cannot be installed; in CI (CI set) that is a failure.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import ROOT, TINY, run_cli
from src.data import synth

EXP = "exp020"  # the storage is under test, not the model: the cheapest experiment with a dropout to tune
SPACE = "tune.space={model.dropout: {float: [0.0, 0.5]}}"
STATES = optuna.trial.TrialState


class Server:
    def __init__(self, folder: Path, url: str):
        self.folder, self.url = folder, url
        self.shown = url.replace(url.split(":")[2].split("@")[0], "***")  # the password masked, as messages show it
        self.storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})

    def ctl(self, action: str) -> subprocess.CompletedProcess:
        return db_command(action, self.folder)

    def trials(self, study: str) -> list:
        try:
            return optuna.load_study(study_name=study, storage=self.storage).get_trials(deepcopy=False)
        except KeyError:
            return []


def db_command(action: str, folder: Path) -> subprocess.CompletedProcess:
    """`bash run.sh db ACTION --dir FOLDER`, as run.sh runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "src.db", action, "--dir", str(folder)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def server():
    # Not under pytest's tmp folder: as root the server runs as `postgres`, which cannot enter /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="blemore-pg-"))
    proc = db_command("start", folder)
    if proc.returncode == 3:  # src.db: the server cannot be installed here
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {proc.stderr.strip()}")
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    yield Server(folder, proc.stdout.strip().splitlines()[-1])
    db_command("stop", folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synth.write(tmp_path_factory.mktemp("pgdata") / "tiny_pg", seed=0, **TINY)


class Worker:
    """`bash run.sh tune` as one machine runs it: its own output root, stdout and stderr in files there."""

    def __init__(self, server: Server, study: str, data: Path, root: Path, trials: int, *extra: str,
                 heartbeat: int = 2, budget=("--smoke",)):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.out, self.err = root, root / "stdout.txt", root / "stderr.txt"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "BLEMORE_OUTPUT_ROOT": str(root)}
        cmd = [sys.executable, "-m", "src.tune", EXP, "--input", str(data), *budget, "--storage", server.url,
               "--study", study, "--set", "train.workers=1", "--set", SPACE, "--trials", str(trials),
               "--heartbeat", str(heartbeat), "--no-rerun", *extra]
        with open(self.out, "a") as out, open(self.err, "a") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 240) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.err.read_text()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def finished(trials) -> list:
    return [t for t in trials if t.state in (STATES.COMPLETE, STATES.PRUNED)]


def figures(trials, requested: int) -> dict:
    """Trials requested / finished / failed / retried / lost: lost = neither finished nor retried."""
    retried = {t.system_attrs["retry_history"][-1] for t in trials if "retry_history" in t.system_attrs}
    failed = [t for t in trials if t.state == STATES.FAIL]
    lost = [t.number for t in failed if t.number not in retried]
    lost += [t.number for t in trials if t.state in (STATES.RUNNING, STATES.WAITING)]
    return {"requested": requested, "finished": len(finished(trials)), "failed": len(failed),
            "retried": len(retried), "lost": len(lost)}


def assert_one_study(trials) -> None:
    """Unique trial numbers; no configuration finished twice (a retry re-runs a failed trial's parameters)."""
    assert len({t.number for t in trials}) == len(trials)
    done = [t.params["model.dropout"] for t in finished(trials)]
    assert len(set(done)) == len(done), done


def test_db_start_reuses_the_server_and_bad_urls_fail_before_training(server, dataset, exp_root):
    again = server.ctl("start")
    assert again.returncode == 0 and again.stdout.strip() == server.url and "already running" in again.stderr
    shown = subprocess.run(["bash", str(ROOT / "run.sh"), "db", "url", "--dir", str(server.folder)], cwd=ROOT,
                           capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.strip() == server.url, shown.stderr
    nothing = db_command("url", server.folder / "nosuch")
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: ") and "no cluster here" in nothing.stderr
    assert db_command("stop", server.folder / "nosuch").stdout.startswith("not running")
    host_port = server.url.rsplit("@", 1)[1].rsplit("/", 1)[0]
    password = server.url.split(":")[2].split("@")[0]
    cases = {
        server.url.replace(password, "wrong"): 'password authentication failed for user "blemore"',
        server.url.replace(host_port, "127.0.0.2:1"): "Connection refused",  # nothing listens there
        server.url.rsplit("/", 1)[0] + "/nosuch": 'database "nosuch" does not exist',
    }
    for url, reason in cases.items():
        started = time.monotonic()
        proc = run_cli("src.tune", EXP, "--input", dataset, "--smoke", "--storage", url, "--study", "never",
                       check=False)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("error: --storage postgresql+psycopg://blemore:***@") and reason in err, err
        assert "wrong" not in err and password not in err
        assert time.monotonic() - started < 30  # before the dataset is even read
    assert not (exp_root / "exp020_mlp_concat" / "output" / "tiny_pg@tune").exists()  # nothing written


def test_independent_workers_form_one_study_and_any_machine_writes_the_child(server, dataset, tmp_path):
    budget = ("--set", "train.epochs=2", "--set", "train.seeds=1")  # the smoke budget, but a study worth keeping
    workers = [Worker(server, "shared", dataset, tmp_path / f"machine{i}", 4, budget=budget) for i in range(2)]
    assert [w.wait() for w in workers] == [0, 0], [w.stderr() for w in workers]
    trials = server.trials("shared")
    done = finished(trials)
    assert 4 <= len(done) <= 5 and all(t.state == STATES.COMPLETE for t in trials)  # both may start the last one
    assert_one_study(trials)
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done} == {str(w.pid) for w in workers}
    for t in done:
        out = Path(t.user_attrs["output"])
        assert (out / "metrics.json").is_file() and out.is_relative_to(tmp_path)  # the worker's own root
    print("figures, two workers:", json.dumps(figures(trials, 4)))

    # A third machine, without the dataset: the summary and the child come from the database alone.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BLEMORE_OUTPUT_ROOT": str(tmp_path / "machine3")}
    proc = subprocess.run([sys.executable, "-m", "src.tune", EXP, "--storage", server.url, "--study", "shared",
                           "--summary", "--write-child"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    child = next((tmp_path / "machine3").glob("exp*_tuned"))
    body = yaml.safe_load((child / "config.yaml").read_text())
    best = max(done, key=lambda t: t.value)
    assert body["parent"] == EXP and body["model"]["dropout"] == best.params["model.dropout"]
    assert body["train"] == {"epochs": 2, "seeds": 1, "workers": 1}
    assert f"study 'shared' ({server.shown}, dataset tiny_pg," in body["note"]


def test_kill_9_mid_trial_is_failed_by_heartbeat_and_retried(server, dataset, tmp_path):
    requested, heartbeat = 6, 1
    a, b = (Worker(server, "kill", dataset, tmp_path / name, requested, heartbeat=heartbeat) for name in "ab")

    def a_running():
        trials = server.trials("kill")
        mine = [t for t in trials if t.state == STATES.RUNNING and t.user_attrs.get("worker", "").endswith(f":{a.pid}")]
        return mine[0] if mine and len(finished(trials)) <= 2 else None
    victim = wait_for(a_running, 120, "worker a to run a trial")
    os.kill(a.pid, signal.SIGKILL)
    killed_at = time.time()
    assert a.wait(10) == -signal.SIGKILL
    # b sits out the grace period, so that it surely starts a trial after a's went stale, however fast trials are
    b.proc.send_signal(signal.SIGSTOP)
    time.sleep(4 * heartbeat + 1)
    b.proc.send_signal(signal.SIGCONT)
    assert b.wait() == 0, b.stderr()

    trials = server.trials("kill")
    dead = next(t for t in trials if t.number == victim.number)
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert dead.state == STATES.FAIL and len(retries) == 1
    assert retries[0].state == STATES.COMPLETE and retries[0].params == dead.params
    assert retries[0].user_attrs["worker"].endswith(f":{b.pid}")
    # Stated time: stale after 4 heartbeats, failed when the surviving worker next starts a trial (here after
    # its pause and the rest of the trial it was running).
    failed_after = dead.datetime_complete.timestamp() - killed_at
    assert failed_after <= 4 * heartbeat + 1 + 60, failed_after
    assert len(finished(trials)) >= requested
    assert_one_study(trials)
    result = figures(trials, requested)
    assert result["lost"] == 0 and result["retried"] == 1
    print("figures, kill -9:", json.dumps({**result, "failed_after_kill_s": round(failed_after, 1)}))

    # a smoke study keeps no child, whoever asks
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BLEMORE_OUTPUT_ROOT": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "src.tune", EXP, "--storage", server.url, "--study", "kill",
                           "--summary", "--write-child"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "a --smoke study's trials ran on the smoke budget" in proc.stderr
    assert not (tmp_path / "c").exists()


def test_server_restart_mid_study_loses_and_duplicates_nothing(server, dataset, tmp_path):
    requested = 10  # enough that the long outage below comes mid-study
    a, b = (Worker(server, "restart", dataset, tmp_path / name, requested) for name in "ab")
    wait_for(lambda: finished(server.trials("restart")), 120, "a finished trial")

    # A short restart (shorter than the 8 s a worker waits): the workers reconnect and go on.
    before = {t.number: (t.value, t.params) for t in finished(server.trials("restart"))}
    assert server.ctl("stop").returncode == 0 and server.ctl("start").returncode == 0
    restarted = time.time()
    wait_for(lambda: [t for t in finished(server.trials("restart")) if t.datetime_start.timestamp() > restarted],
             90, "a trial started after the restart to finish")
    assert a.proc.poll() in (None, 0) and b.proc.poll() in (None, 0), (a.stderr(), b.stderr())

    # A long outage while a trial trains: each worker gives up with one line naming the URL. The workers are
    # frozen while the server stops, so that the outage surely catches a trial in training, however fast.
    def frozen_mid_trial():
        wait_for(lambda: [t for t in server.trials("restart") if t.state == STATES.RUNNING and "worker" in t.user_attrs],
                 60, "a trial in training")
        for w in (a, b):
            w.proc.send_signal(signal.SIGSTOP)
        if [t for t in server.trials("restart") if t.state == STATES.RUNNING]:
            return True
        for w in (a, b):
            w.proc.send_signal(signal.SIGCONT)
    wait_for(frozen_mid_trial, 90, "both workers frozen while a trial trains")
    middle = {t.number: (t.value, t.params) for t in finished(server.trials("restart"))}
    assert len(middle) < requested and server.ctl("stop").returncode == 0
    for w in (a, b):
        w.proc.send_signal(signal.SIGCONT)
    codes = [w.wait(120) for w in (a, b)]
    for w, code in zip((a, b), codes):
        if code == 0:  # it finished the study before it needed the database again
            continue
        last = w.stderr().strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in w.stderr(), w.stderr()
        assert last.startswith(f"error: lost the study database {server.shown} for more than 8 s") and \
            last.endswith("rerun the same command to continue the study"), last
    assert server.ctl("start").returncode == 0
    orphaned = [t.number for t in server.trials("restart") if t.state == STATES.RUNNING]  # their workers gave up
    assert orphaned

    # Rerunning a worker continues the same study: stale trials failed and retried, finished ones kept.
    rerun = Worker(server, "restart", dataset, tmp_path / "a", requested)
    assert rerun.wait() == 0, rerun.stderr()
    trials = server.trials("restart")
    now = {t.number: (t.value, t.params) for t in finished(trials)}
    assert {k: now.get(k) for k in {**before, **middle}} == {**before, **middle}  # nothing finished was lost
    assert len(now) >= requested and not [t for t in trials if t.state == STATES.RUNNING]
    assert_one_study(trials)
    result = figures(trials, requested)
    assert result["lost"] == 0
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    assert set(orphaned) <= retried
    print("figures, server restart:", json.dumps({**result, "worker_exit_codes": codes, "orphaned": len(orphaned),
                                                   "last_lines": [w.stderr().strip().splitlines()[-1][:90]
                                                                  for w in (a, b) if w.stderr().strip()]}))
