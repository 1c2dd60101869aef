"""Study databases: a local PostgreSQL server (`bash run.sh db`) and the Optuna storage that tune's workers share.

    bash run.sh db start [--dir DIR] [--port N] [--listen ADDR]   prints the storage URL
    bash run.sh db stop [--dir DIR]        bash run.sh db url [--dir DIR]
The cluster lives in DIR (default .cache/postgres/ of the repository): data/ (the cluster), password, port and
server.log. Debian's `postgresql` package is installed with apt when no server binaries are found (root only).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` account the package creates.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc

from src.errors import UserError, cli

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".cache" / "postgres"
USER = "blemore"      # the cluster's superuser, the one the URL names
DATABASE = "optuna"   # created on first start
SERVER_ACCOUNT = "postgres"  # created by Debian's package; the server's owner when we are root
START_TIMEOUT_S = 60
GRACE_BEATS = 4  # a trial whose worker has missed this many heartbeats is dead: failed, then retried once


class NotInstalled(UserError):
    """No PostgreSQL server binaries and no way to install them here."""


# ---- the server binaries ------------------------------------------------------------------------------------

def find_bin() -> Path | None:
    """The newest Debian server installation's bin folder, else the folder of a pg_ctl on PATH."""
    version = lambda p: tuple(int(x) for x in Path(p).parts[-3].split(".") if x.isdigit())  # 15, or 9.6
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def install() -> Path:
    """apt-get install postgresql (root only); returns the bin folder."""
    if os.geteuid() != 0:
        raise NotInstalled("PostgreSQL is not installed and cannot be installed here without root; "
                           "run `apt-get install postgresql` as root (or put pg_ctl on PATH)")
    print("installing Debian's postgresql package (apt-get; a minute)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"])
    for cmd in steps:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise NotInstalled(f"PostgreSQL cannot be installed here: `{' '.join(cmd)}` failed ({last})")
    found = find_bin()
    if found is None:
        raise NotInstalled("PostgreSQL cannot be installed here: apt-get installed postgresql but no pg_ctl was found")
    return found


# ---- running commands as the server's owner -----------------------------------------------------------------

def server_account() -> str | None:
    """The account the server runs as: None for the current user, 'postgres' when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise UserError(f"PostgreSQL does not run as root and there is no '{SERVER_ACCOUNT}' account; "
                        "reinstall the postgresql package or run as another user") from None
    return SERVER_ACCOUNT


def as_owner(cmd: list[str]) -> list[str]:
    account = server_account()
    return ["runuser", "-u", account, "--", *cmd] if account else cmd


def run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(as_owner(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise UserError(f"{what} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return proc


def give_to_owner(path: Path) -> None:
    """As root: the cluster folder belongs to the server's account, which must also be able to reach it."""
    account = server_account()
    if account is None:
        return
    entry = pwd.getpwnam(account)
    for folder, _, files in os.walk(path):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
    if subprocess.run(as_owner(["test", "-w", str(path)])).returncode != 0:
        raise UserError(f"{path}: the '{account}' account cannot reach this folder (a parent folder is not "
                        "searchable by others); use --dir in a folder it can reach, e.g. under /tmp")


# ---- the cluster ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url(folder: Path, host: str = "127.0.0.1") -> str:
    """The SQLAlchemy URL of the cluster's study database (psycopg driver)."""
    password = (folder / "password").read_text().strip()
    port = int((folder / "port").read_text())
    return f"postgresql+psycopg://{USER}:{password}@{host}:{port}/{DATABASE}"


def initialise(folder: Path, bin_dir: Path, port: int | None) -> None:
    """initdb into folder/data with a random password; password authentication on every TCP connection."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    pw = folder / "password"
    pw.write_text(secrets.token_urlsafe(18) + "\n")
    os.chmod(pw, 0o600)
    (folder / "port").write_text(f"{port or free_port()}\n")
    give_to_owner(folder)
    run([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", USER, f"--pwfile={pw}", "--auth=scram-sha-256",
         "--no-locale", "-E", "UTF8", "--no-instructions"], "initdb")
    # Other machines may connect when the server listens beyond loopback (--listen); the password guards them.
    with open(folder / "data" / "pg_hba.conf", "a") as fh:
        fh.write("host all all all scram-sha-256\n")


def running(folder: Path, bin_dir: Path) -> bool:
    proc = subprocess.run(as_owner([str(bin_dir / "pg_ctl"), "status", "-D", str(folder / "data")]),
                          capture_output=True, text=True)
    return proc.returncode == 0


def create_database(folder: Path) -> None:
    import psycopg

    admin = url(folder).replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone():
            conn.execute(f'create database "{DATABASE}"')


def start(folder: Path, port: int | None = None, listen: str = "127.0.0.1") -> str:
    """Install if needed, initialise on first use, start unless running, create the database; returns the URL."""
    bin_dir = find_bin() or install()
    if not (folder / "data" / "PG_VERSION").is_file():
        shutil.rmtree(folder / "data", ignore_errors=True)  # what an interrupted initdb left
        initialise(folder, bin_dir, port)
    elif port is not None and port != int((folder / "port").read_text()):
        raise UserError(f"{folder}: the cluster uses port {(folder / 'port').read_text().strip()}; "
                        f"stop it and delete the folder to change --port")
    if running(folder, bin_dir):
        print(f"already running ({folder})", file=sys.stderr)
    else:
        give_to_owner(folder)
        port_now = int((folder / "port").read_text())
        # no Unix socket: its path length is limited and every client here connects over TCP
        options = f"-p {port_now} -h '{listen}' -c unix_socket_directories=''"
        run([str(bin_dir / "pg_ctl"), "start", "-D", str(folder / "data"), "-l", str(folder / "server.log"),
             "-w", "-t", str(START_TIMEOUT_S), "-o", options], f"starting PostgreSQL (see {folder / 'server.log'})")
    create_database(folder)
    host = "127.0.0.1" if listen in ("127.0.0.1", "localhost") else socket.getfqdn()
    return url(folder, host)


def stop(folder: Path) -> bool:
    """Stop the cluster's server (fast mode: open transactions roll back); False when it was not running."""
    bin_dir = find_bin()
    if bin_dir is None or not (folder / "data" / "PG_VERSION").is_file() or not running(folder, bin_dir):
        return False
    run([str(bin_dir / "pg_ctl"), "stop", "-D", str(folder / "data"), "-m", "fast", "-w"], "stopping PostgreSQL")
    return True


# ---- the Optuna storage ---------------------------------------------------------------------------------------

def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// name the driver we ship (psycopg 3); SQLAlchemy's default would be psycopg2."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def shown_url(url: str) -> str:
    """The URL with its password masked: for messages, notes and summaries."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def check_url(url: str) -> None:
    """A URL that can hold a study shared by workers and continued by a rerun, or a one-line UserError."""
    try:
        parsed = sqlalchemy.engine.make_url(normalise_url(url))
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {url}: not a database URL (e.g. sqlite:///study.db, "
                        "postgresql://user:password@host:port/database)") from None
    if parsed.get_backend_name() == "sqlite" and (parsed.database in (None, "", ":memory:")
                                                   or parsed.query.get("mode") == "memory"):
        raise UserError(f"--storage {url}: an in-memory database lives and dies with one process, so workers "
                        "cannot share it and a rerun cannot continue it; use a file (sqlite:///study.db) or a server")


def connection_lost(err: BaseException) -> bool:
    """True when err, or an error it was raised from or while handling, says the connection failed.

    A lost connection can surface as a later statement's PendingRollbackError, raised while handling it.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(err, sqlalchemy.exc.DBAPIError) and err.connection_invalidated:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def reason(err: BaseException) -> str:
    """The driver's own words for a failed connection, on one line."""
    while err.__cause__ is not None and not isinstance(err, sqlalchemy.exc.DBAPIError):
        err = err.__cause__
    text = str(getattr(err, "orig", None) or err)
    text = text.split("(Background on this error")[0]
    return " ".join(text.split()) or type(err).__name__


class DatabaseLost(Exception):
    """The study database stayed unreachable for longer than a worker waits; the message names the URL."""


def lost_in(err: BaseException) -> DatabaseLost | None:
    """The DatabaseLost behind err, if any: optuna's trial loop can replace it with an error of its own while
    handling it (it reads the trial back from the same lost database)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DatabaseLost):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# Storage calls that may be repeated after a lost connection: reads, and writes of the same value again. Each
# runs in a transaction of its own; the private ones are what optuna's cache layer calls on its RDB backend.
RETRIED = ("create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
           "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
           "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
           "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
           "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
           "get_best_trial", "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
           "_get_stale_trial_ids")


class SharedStorage(optuna.storages.RDBStorage):
    """RDBStorage that rides out a database restart: each call retries a lost connection for up to
    reconnect_s seconds, and a heartbeat that cannot reach the database is skipped, not fatal to its thread."""

    def __init__(self, url: str, reconnect_s: float, **kwargs):
        self.reconnect_s = reconnect_s
        self.lost = False  # once a call has given up, the calls made while failing the trial do not wait again
        super().__init__(url, **kwargs)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:  # noqa: BLE001 - the heartbeat thread must outlive a restart of the server
            if not connection_lost(err):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, plus running trials older than the grace period that never got a heartbeat
        nor their 'worker' attribute (tune writes it first): their worker lost the database right after
        creating them, and Optuna, which only looks at heartbeats, would leave them running for ever."""
        stale = super()._get_stale_trial_ids(study_id)
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.grace_period)
        for t in self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if "worker" not in t.user_attrs and t.datetime_start < cutoff and t._trial_id not in stale:
                stale.append(t._trial_id)
        return stale


def _retrying(name: str):
    method = getattr(SharedStorage, name)  # its own override where it has one, else RDBStorage's

    def call(self, *args, **kwargs):
        deadline = time.monotonic() + (0 if self.lost else self.reconnect_s)
        while True:
            try:
                result = method(self, *args, **kwargs)
                self.lost = False
                return result
            except Exception as err:  # noqa: BLE001 - StorageInternalError wraps SQLAlchemy's errors
                if not connection_lost(err):
                    raise
                if time.monotonic() >= deadline:
                    self.lost = True
                    raise DatabaseLost(f"lost the study database {shown_url(self.url)} for more than "
                                       f"{self.reconnect_s:.0f} s ({reason(err)}); rerun the same command "
                                       "to continue the study") from None
                time.sleep(1)
    call.__name__ = name
    return call


for _name in RETRIED:
    setattr(SharedStorage, _name, _retrying(_name))


def open_storage(url: str, heartbeat_s: int = 30, grace_beats: int = GRACE_BEATS) -> SharedStorage:
    """The study storage at url; a worker silent for grace_beats heartbeats is dead and its trial retried once.

    Connection problems (wrong password, no server, no such database) are a one-line UserError naming the URL.
    """
    check_url(url)
    url = normalise_url(url)
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":  # several local workers write at once: wait for the file lock instead of failing
        engine = {"connect_args": {"timeout": 120}}
    else:  # pre_ping replaces a pooled connection that a server restart closed
        engine = {"pool_pre_ping": True}
        if backend == "postgresql":
            engine["connect_args"] = {"connect_timeout": 10}
    grace = heartbeat_s * grace_beats
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return SharedStorage(
                    url, reconnect_s=grace, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == 2:  # workers started together race to create the tables; the loser tries again
                raise UserError(f"--storage {shown_url(url)}: cannot create the study tables ({reason(err)})") from None
        except Exception as err:  # noqa: BLE001 - drivers raise many kinds for a bad URL or an unreachable server
            if connection_lost(err):
                raise UserError(f"--storage {shown_url(url)}: cannot connect ({reason(err)})") from None
            raise UserError(f"--storage {shown_url(url)}: cannot open ({type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0]})") from None
        time.sleep(1)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="bash run.sh db", description="A local PostgreSQL server for Optuna studies.")
    p.add_argument("action", choices=["start", "stop", "url"])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cluster folder (default: .cache/postgres)")
    p.add_argument("--port", type=int, default=None, help="TCP port on first start (default: a free one)")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on; '*' for other machines")
    args = p.parse_args(argv)
    folder = args.dir.resolve()
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 1..65535")
    if args.action == "start":
        try:
            print(start(folder, args.port, args.listen))
        except NotInstalled as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(3)  # tests skip (outside CI) on this code only
    elif args.action == "stop":
        print("stopped" if stop(folder) else f"not running ({folder})")
    else:
        if not (folder / "password").is_file():
            raise UserError(f"{folder}: no cluster here; run `bash run.sh db start` first")
        print(url(folder))


if __name__ == "__main__":
    main()
