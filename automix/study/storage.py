"""The study's Optuna storage: open (or create) the study, one driver per study, stale trials.

The driver is the single writer: workers never touch the storage. "Single" is enforced by a
lease: a row per study in the table `automix_study_lease` of the Optuna database (SQLite or
PostgreSQL alike), holding the driver's PID, host, start time and a heartbeat it refreshes from a
background thread. Acquiring is atomic (an INSERT on the study's primary key; a takeover is a
compare-and-swap UPDATE on the previous owner), so two drivers started together cannot both get
it. A lease whose holder is provably dead (same host, PID gone or reused) or whose heartbeat is
older than `LEASE_EXPIRY_S` is taken over; a live holder's lease only with `takeover=True`
(`automix search --takeover`). Trials a driver left RUNNING are requeued only by the lease's new
holder (`requeue_stale`), so they are stale for certain, never a live driver's trials.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool

from automix.config.locations import relocate_recorded_store
from automix.config.study import StudyConfig, StudyConfigError, default_storage_url, format_size, load_study
from automix.search._optuna_compat import storage_of, trial_id

__all__ = ["open_study", "metric_names", "dashboard_note", "study_note", "requeue_stale", "study_from_ref", "sqlite_lock", "StudyLease", "LeaseHolder",
           "StudyBusyError", "LEASE_HEARTBEAT_S", "LEASE_EXPIRY_S", "DRIVER_ATTR"]

LEASE_TABLE = "automix_study_lease"
LEASE_HEARTBEAT_S = 5.0   # how often the holder refreshes its heartbeat
LEASE_EXPIRY_S = 60.0     # a heartbeat older than this frees the lease (holder on another host)
DRIVER_ATTR = "driver"    # trial user attribute: the lease token of the driver that asked it
_HOST = socket.gethostname()


class StudyBusyError(ValueError):
    """Another live driver holds the study's lease (or took it over from this one)."""


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):])
    return None


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Serialise schema creation on a SQLite database between processes (a no-op for servers).

    Two drivers starting together on a fresh directory would otherwise race in Optuna's or
    MLflow's table creation. The lock is a BSD `flock` on the database file itself: SQLite locks
    with POSIX byte-range locks, which `flock` does not touch, and an empty file is a new database.
    """
    path = _sqlite_file(url)
    if path is None or not path.parent.is_dir():
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_study(cfg: Any, sampler: Any = None, *, create: bool = True) -> Any:
    """The study's Optuna study (created on first use; directions checked on resume)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with sqlite_lock(cfg.storage_url):
            storage = optuna.storages.RDBStorage(cfg.storage_url)
    except Exception as err:
        raise ValueError(f"Optuna storage {cfg.storage_url!r} cannot be opened: {err}") from None
    if not create:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler,
                                directions=cfg.directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != list(cfg.directions):
        raise ValueError(
            f"study {cfg.name!r} in {cfg.storage_url} has objectives {have}, but the study file "
            f"asks for {cfg.directions}: use a new study name"
        )
    names = metric_names(cfg)
    if study.metric_names != names:  # new studies, and ones created before names were set
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def metric_names(cfg: Any) -> list[str]:
    """The objectives' names as optuna-dashboard shows them (memory is in bytes)."""
    return [{"memory": "memory_bytes"}.get(n, n) for n in cfg.objective_names]


def dashboard_note(study: Any, text: str) -> bool:
    """Put ``text`` (Markdown) in optuna-dashboard's note of ``study``, once: a note already there
    (ours, or one the user wrote in the dashboard) is kept. False when nothing was written
    (optuna-dashboard not installed, or a note there)."""
    try:
        from optuna_dashboard import get_note, save_note  # lazy: optional; only the dashboard reads notes
    except ImportError:
        return False
    if get_note(study):
        return False
    save_note(study, text)
    return True


def study_note(cfg: Any) -> str:
    """What optuna-dashboard cannot say about a study: the units of its objectives, and what its
    companion study is."""
    memory = "predicted by the analytic memory model" if cfg.objectives.memory == "predicted" else "measured"
    lines = [f"## {cfg.name} (an automix study)", "",
             f"Objectives: **{cfg.objectives.quality}** ({cfg.directions[0]}) and **memory_bytes**, the "
             f"training step's peak memory in bytes ({memory}); the budget is {format_size(cfg.memory_budget)} "
             f"({cfg.memory_budget} bytes). Each trial's user attribute `memory_mib` is the same memory in MiB.",
             "", f"`automix status {cfg.name}` lists the trials and the front, `automix export {cfg.name}` "
             "writes a pick, `automix ui` opens the MLflow runs."]
    if cfg.pruner.enabled:
        lines += ["", f"The study **{cfg.name}.fidelity** beside this one is its companion, not a search: "
                  f"the one-objective study through which the `{cfg.pruner.name}` pruner stops hopeless trials."]
    return "\n".join(lines)


def fidelity_note(cfg: Any) -> str:
    """optuna-dashboard's note of the companion study of a search with a pruner."""
    return "\n".join([
        f"## {cfg.name}.fidelity (companion of the automix study {cfg.name})", "",
        f"Not a search of its own: the one-objective study whose `{cfg.pruner.name}` pruner judges the running "
        f"trials of **{cfg.name}** on their held-out {cfg.objectives.quality} after 0, "
        f"{cfg.pruner.report_every(cfg.trial.steps)}, ... training steps. One trial here per trial there "
        f"(user attribute `trial`, memory in bytes in `memory`); results, memory and the front are in "
        f"**{cfg.name}**."])


# -- the lease ---------------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]


def _pid_alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):  # killed, not yet reaped
        return False
    return not proc_start or start == proc_start  # a different start time: the PID was reused


@dataclass
class LeaseHolder:
    owner: str
    pid: int
    host: str
    started: float
    heartbeat: float
    proc_start: str | None = None

    def alive(self, expiry_s: float = LEASE_EXPIRY_S) -> bool:
        """Whether the holder may still be running: on this host its PID decides, elsewhere its
        heartbeat (a holder that has not written one for `expiry_s` seconds is presumed dead)."""
        if self.host == _HOST:
            return _pid_alive(self.pid, self.proc_start)
        return time.time() - self.heartbeat < expiry_s

    def describe(self) -> str:
        since = _dt.datetime.fromtimestamp(self.started).isoformat(sep=" ", timespec="seconds")
        return (f"PID {self.pid} on {self.host} since {since} "
                f"(last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago)")


class StudyLease:
    """One study's lease in its Optuna database (see the module docstring).

    `check_free` only reads (a busy study fails before anything is started or written);
    `acquire` takes the lease and starts the heartbeat thread; `verify` raises StudyBusyError
    when another driver has taken the lease over; `release` deletes it.
    """

    def __init__(self, url: str, study: str, *, heartbeat_s: float = LEASE_HEARTBEAT_S,
                 expiry_s: float = LEASE_EXPIRY_S) -> None:
        self.url, self.study = url, study
        self.heartbeat_s, self.expiry_s = heartbeat_s, expiry_s
        self.token = uuid.uuid4().hex
        self.previous: LeaseHolder | None = None  # the holder a takeover replaced
        self.lost: LeaseHolder | None = None
        kwargs: dict[str, Any] = {"poolclass": NullPool}
        if _sqlite_file(url) is not None:
            kwargs["connect_args"] = {"timeout": 30}
        self._engine = sqlalchemy.create_engine(url, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading -----------------------------------------------------------------------------
    def holder(self) -> LeaseHolder | None:
        """The current holder (None when the study is free, or the database has no lease table)."""
        path = _sqlite_file(self.url)
        if path is not None and not path.exists():
            return None
        try:
            with self._engine.connect() as c:
                row = c.execute(sqlalchemy.text(
                    f"SELECT owner, pid, host, started, heartbeat, proc_start FROM {LEASE_TABLE} "
                    "WHERE study = :s"), {"s": self.study}).first()
        except sqlalchemy.exc.OperationalError as err:
            if "no such table" in str(err):
                return None
            raise
        except sqlalchemy.exc.ProgrammingError as err:  # PostgreSQL: relation does not exist
            if "does not exist" in str(err):
                return None
            raise
        if row is None:
            return None
        return LeaseHolder(row[0], int(row[1]), row[2], float(row[3]), float(row[4]), row[5])

    def _busy(self, h: LeaseHolder) -> StudyBusyError:
        return StudyBusyError(
            f"study {self.study!r} is being run by {h.describe()}; only one driver may run a study. "
            f"Wait for it, stop it, or use --takeover if it is dead")

    def check_free(self, takeover: bool = False) -> None:
        """Raise StudyBusyError if a live driver holds the lease (reads only)."""
        h = self.holder()
        if h is not None and h.owner != self.token and not takeover and h.alive(self.expiry_s):
            raise self._busy(h)

    # -- writing -----------------------------------------------------------------------------
    def _create_table(self) -> None:
        ddl = (f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (study VARCHAR(512) PRIMARY KEY, "
               "owner VARCHAR(64) NOT NULL, pid INTEGER NOT NULL, host VARCHAR(255) NOT NULL, "
               "started DOUBLE PRECISION NOT NULL, heartbeat DOUBLE PRECISION NOT NULL, "
               "proc_start VARCHAR(64))")
        for attempt in range(3):
            try:
                with sqlite_lock(self.url), self._engine.begin() as c:
                    c.execute(sqlalchemy.text(ddl))
                return
            except sqlalchemy.exc.IntegrityError:  # PostgreSQL: a concurrent CREATE won
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def acquire(self, takeover: bool = False) -> None:
        """Take the study's lease atomically (a dead or expired holder's too; a live one's only
        with `takeover`) and start the heartbeat."""
        self._create_table()
        pid = os.getpid()
        stat = _proc_stat(pid)
        for _ in range(5):
            now = time.time()
            row = {"s": self.study, "o": self.token, "p": pid, "h": _HOST, "t": now,
                   "ps": stat[1] if stat else None}
            try:
                with self._engine.begin() as c:
                    c.execute(sqlalchemy.text(
                        f"INSERT INTO {LEASE_TABLE} (study, owner, pid, host, started, heartbeat, proc_start) "
                        "VALUES (:s, :o, :p, :h, :t, :t, :ps)"), row)
                break
            except sqlalchemy.exc.IntegrityError:
                pass
            h = self.holder()
            if h is None:
                continue  # released in between: insert again
            if h.alive(self.expiry_s) and not takeover:
                raise self._busy(h)
            with self._engine.begin() as c:  # compare-and-swap on the previous owner
                n = c.execute(sqlalchemy.text(
                    f"UPDATE {LEASE_TABLE} SET owner = :o, pid = :p, host = :h, started = :t, "
                    "heartbeat = :t, proc_start = :ps WHERE study = :s AND owner = :old"),
                    {**row, "old": h.owner}).rowcount
            if n == 1:
                self.previous = h
                break
        else:
            raise StudyBusyError(f"study {self.study!r}: could not take its lease (other drivers "
                                 "keep taking it); stop them first")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.study}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with self._engine.begin() as c:
                    n = c.execute(sqlalchemy.text(
                        f"UPDATE {LEASE_TABLE} SET heartbeat = :t WHERE study = :s AND owner = :o"),
                        {"t": time.time(), "s": self.study, "o": self.token}).rowcount
            except sqlalchemy.exc.SQLAlchemyError:
                continue  # a busy database: try again at the next beat
            if n == 0:
                self.lost = self.holder() or LeaseHolder("?", 0, "?", time.time(), time.time())
                return

    def verify(self) -> None:
        """Raise StudyBusyError when this driver no longer holds the lease (taken over)."""
        if self.lost is None:
            h = self.holder()
            if h is not None and h.owner == self.token:
                return
            self.lost = h or LeaseHolder("?", 0, "?", time.time(), time.time())
        raise StudyBusyError(
            f"study {self.study!r} was taken over by {self.lost.describe()}: this driver stops "
            "without recording its trials in flight (the new driver re-runs them)")

    def release(self) -> None:
        """Stop the heartbeat and free the lease (if still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            with self._engine.begin() as c:
                c.execute(sqlalchemy.text(f"DELETE FROM {LEASE_TABLE} WHERE study = :s AND owner = :o"),
                          {"s": self.study, "o": self.token})
        self._engine.dispose()


def requeue_stale(study: Any, keep_driver: str | None = None) -> list[int]:
    """Mark trials left RUNNING as failed-stale and enqueue their parameters to run again.

    Call it holding the study's lease: every RUNNING trial not asked by `keep_driver` (the
    holder's lease token) then belongs to a driver that is dead or was taken over. Returns the
    numbers of the trials that were requeued. Idempotent: a requeued trial is retired and never
    requeued twice; WAITING (enqueued) trials are left for `ask` to pick up. Trials stopped by
    Ctrl-C go through the same path (the driver leaves them RUNNING, marked `interrupted`).
    """
    storage = storage_of(study)
    trials = study.get_trials(deepcopy=False)
    already = {t.user_attrs.get("requeued_from") for t in trials}
    requeued = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        if keep_driver is not None and t.user_attrs.get(DRIVER_ATTR) == keep_driver:
            continue
        # Enqueue first (once), then retire the old trial: a driver killed in between leaves
        # the copy marked with `requeued_from`, so the next resume does not enqueue it twice.
        if t.params and t.number not in already:
            study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number},
                                skip_if_exists=False)
        storage.set_trial_user_attr(trial_id(t), "stale", True)
        storage.set_trial_user_attr(trial_id(t), "failure_reason",
                                    t.user_attrs.get("failure_reason") or "stale: its driver stopped mid-trial")
        storage.set_trial_state_values(trial_id(t), TrialState.FAIL)
        requeued.append(t.number)
    return requeued


def study_from_ref(ref: str, storage: str | None = None) -> StudyConfig:
    """A study's config from its YAML file or from its name in an Optuna storage.

    The driver stores the validated config in the Optuna study's user attributes, so `status`
    and `export` work from the name alone (default storage: the working directory's).
    """
    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        cfg = load_study(ref)
        if storage:
            cfg.storage = storage
        return cfg
    url = storage or default_storage_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise StudyConfigError(f"no study storage at {url}: run `automix search` first or pass --storage")
    names = optuna.get_all_study_names(url)
    if ref not in names:
        raise StudyConfigError(f"study {ref!r} not found in {url}; studies there: {sorted(names) or 'none'}")
    attrs = optuna.load_study(study_name=ref, storage=url).user_attrs
    if "config" not in attrs:
        raise StudyConfigError(f"study {ref!r} in {url} was not created by automix (no config recorded)")
    data = dict(attrs["config"])
    # a copied or moved project reads its own MLflow store, never the one it was copied from
    data["tracking_uri"], _ = relocate_recorded_store(data.get("tracking_uri"), data.get("storage"), url)
    data["storage"] = url
    return StudyConfig.model_validate(data)
