"""Asynchronous SGD with a parameter server (rank 0) and workers (ranks 1..N).

    worker w                                       server (rank 0)
    --------                                       ---------------
    PULL ------------------------------------->    reply (version v, parameters W)
    loop over my slices of the global batches:
        g = gradient at the W it last received
        PUSH (w, seq, v_pulled, g) ----------->    if (w, seq) already seen: resend its reply
                                                   staleness s = v - v_pulled
                                                   if bound and s > bound: DROP (not applied)
                                                   else W -= lr/max(1, s) * g;  v += 1
        <------------------------------------     REPLY (seq, APPLIED|DROPPED, v, W)
        (no reply in ack_timeout: resend the same (w, seq))
    BYE (reason, stats) ----------------------->   <- BYE_ACK

Each worker runs at its own pace: nobody waits for the slowest. A worker's gradient was
computed at parameters `s` server versions old (its *staleness*); the server records s
for every update.

Staleness-aware learning rate (Zhang, Gupta, Lian, Liu, IJCAI 2016): divide the rate by
the staleness, lr / max(1, s), so a gradient computed on older parameters moves them less.
Server momentum (optional, default off): W -= b with b = m b + lr_s g. Asynchrony already
acts like momentum (Mitliagkas et al. 2016: about 1 - 1/N for N workers), so a smaller
explicit m than synchronous training's is the usual choice.
Averaged parameters for the final model (default on, `average_window`): with a constant
rate, the server's last version carries the noise of its last few updates (each from a
16-image slice when 4 workers split batches of 64); the model the run ends with, and is
tested with, is therefore a running average of the server's versions (Polyak-Ruppert
averaging, as an exponential moving average):
    w_avg += (W - w_avg) / window,     window = min(average_window, 1 + v / 10)
The window grows with the run (about its last tenth) up to `average_window` updates, so a
short run is not pulled back towards its starting point. Workers always train on W: the
average is never sent, and changes no update. Measured on MNIST, 4 workers, 2 epochs,
batch 64, lr 0.01, server momentum 0.8: last version 98.64%, average (window 100) 98.97%,
with sync at 99.13%. average_window=0 turns it off (the model is the last version).
Why small slices and a small rate rather than matching sync's batch and rate: a stale
gradient is late by s updates, so by s x (slice size) images; with 16-image slices that is
~48 images at s = 3, with 64-image slices (--batch-size 256) ~192. And a delay limits the
stable step: measured, batch 256 (64-image pushes) at lr 0.12, momentum 0.8 (sync's rate
per image, assuming s = 3) reached 93.5%.
Staleness bound: an update with s > bound is DROPPED (not applied, counted, and the worker
receives the fresh parameters with the reply and carries on). We drop rather than make
fast workers wait (as SSP does), because waiting would let one stalled worker stop all.

Faults, and why no update is lost or applied twice:
* Every push carries (worker, seq), seq = 1, 2, 3, ... A worker sends push k+1 only after
  the reply to push k (stop-and-wait), so the server remembers, per worker, the last seq it
  handled and that push's outcome; a repeated (w, seq) - a resend after a lost or late
  reply - is answered with the recorded outcome and NOT applied again.
* A worker that gets no reply within `ack_timeout` resends the same push (up to `retries`
  times), then gives up; so a lost reply loses no update.
* A worker that raises sends a BYE(FAILED) on its way out if it still can: reported "dead".
  A worker silent for `timeout` seconds is reported "stalled"; the server stops waiting for
  it, but if it speaks again before the end it is "running" again and its pushes count.
* A dead worker's remaining slices are NOT handed to the others: the server says so in its
  log, and the run ends with the updates that were applied (each exactly once). Async SGD
  needs no full pass over the data to converge; for a full pass, resume from a checkpoint.
* The server finishes when no worker is running. It then answers any late push with STOP
  (not applied, and the worker is told so) and waits for every worker's BYE, replying
  BYE_ACK. Because a worker reads everything until its BYE_ACK, and the server reads
  everything until each BYE, no message is left in flight at the end (under MPI a message
  nobody receives could block its sender forever).
* That drain wait is bounded: at most `drain_timeout` seconds (default: 10 x `timeout`,
  300 s with the CLI's --ps-timeout 30) after the last running worker finished; it ends
  as soon as every worker has said BYE, which a live worker does within one step plus one
  reply. So the full wait only happens for a worker the server already counts as stalled
  (silent for `timeout`): it gets ten times that long to wake up and be told STOP; one
  that has not said BYE by the deadline is reported "lost" and the server ends anyway.
  Set it with --ps-drain-timeout. Under MPI a killed worker process ends the whole job
  (see launch.py), so the drain never waits for a dead process.

Checkpoints (`checkpoint=`): the server counts the pushes it has handled; each time that
count completes an epoch's worth (`pushes_per_epoch`, every worker's slices of one epoch),
it writes W, its momentum, the averaged W, the version and the epoch (`write` in
`checkpoint.py`; the workers are not stopped). A resumed run restores them and the workers
start that epoch again: updates made after the checkpoint are redone, which for async SGD
is within its run-to-run noise.

    rank 0: server                 holds W (the only true copy), momentum, averaged W
    rank 1..N: workers             hold a copy of W as of their last reply, their slices
    traffic: point to point only   PUSH gradient (worker -> server), REPLY W (server -> one)
"""
import time
from dataclasses import dataclass, field

import numpy as np

from .comm import ANY_SOURCE, pack, unpack
from .common import Faults, WorkerFailure, compute_gradients, flat_grad, flat_params, load_flat

# message tags
PULL, PUSH, REPLY, BYE, BYE_ACK = 1, 2, 3, 4, 5
# reply status
PARAMS, APPLIED, DROPPED, STOP = 0, 1, 2, 3
STATUS_NAMES = {PARAMS: "params", APPLIED: "applied", DROPPED: "dropped", STOP: "stop"}
# BYE reasons
DONE, FAILED, GAVE_UP, STOPPED = 0, 1, 2, 3
REASONS = {DONE: "done", FAILED: "dead", GAVE_UP: "gave up", STOPPED: "stopped"}
# the float64 statistics a worker sends with its BYE, in this order
BYE_STATS = ("steps", "pushes", "applied", "dropped", "resends", "loss_sum", "correct",
             "seen", "bytes_sent", "train_seconds")


__all__ = ["Faults", "WorkerFailure", "ParameterServer", "AsyncWorker"]


@dataclass
class WorkerRecord:
    """What the server knows about one worker."""
    status: str = "running"          # running | stalled | done | dead | stopped | gave up
    last_seen: float = 0.0
    last_seq: int = 0                # highest seq handled
    last_status: int = PARAMS        # outcome of that push (resent on a duplicate)
    applied: list = field(default_factory=list)  # seqs applied, in order
    dropped: int = 0
    duplicates: int = 0
    stalled_events: int = 0
    said_bye: bool = False
    stats: dict = field(default_factory=dict)


class ParameterServer:
    def __init__(self, comm, model, lr, staleness_aware=True, staleness_bound=None,
                 timeout=30.0, drain_timeout=None, faults=None, log=None, momentum=0.0,
                 average_window=100, pushes_per_epoch=None, checkpoint=None):
        self.comm, self.model, self.lr, self.momentum = comm, model, lr, momentum
        self.params = model.parameters()
        self.w = flat_params(self.params).copy()
        self.velocity = np.zeros_like(self.w)  # used with server momentum only
        self.average_window = average_window or 0  # 0 / None: no averaging
        self.w_avg = self.w.copy()  # running average of versions (see module doc)
        self.version = 0
        self.staleness_aware, self.staleness_bound = staleness_aware, staleness_bound
        self.timeout = timeout
        self.drain_timeout = 10 * timeout if drain_timeout is None else drain_timeout
        self.pushes_per_epoch, self.checkpoint = pushes_per_epoch, checkpoint
        self.handled = 0  # pushes applied or dropped (not duplicates, not after the end)
        self.faults = faults or Faults()
        self.log = log
        self.workers = {r: WorkerRecord() for r in range(1, comm.size)}
        self.staleness = []   # one per applied update
        self.updates = []     # (worker, seq, pulled version, staleness, lr used)

    # -- the protocol --------------------------------------------------------------------
    def _reply(self, worker, seq, status):
        if (worker, seq) in self.faults.lose_replies and status != STOP:
            self.faults.lose_replies.discard((worker, seq))  # lost once; the resend gets one
            return
        self.comm.send(pack([seq, status, self.version], self.w), worker, REPLY)

    def _apply(self, worker, seq, pulled, grad):
        s = self.version - pulled
        if self.staleness_bound is not None and s > self.staleness_bound:
            return DROPPED
        lr = self.lr / max(1, s) if self.staleness_aware else self.lr
        if self.momentum:  # heavy ball on the server: b = m b + lr g;  W -= b
            self.velocity *= self.momentum
            self.velocity += lr * grad
            self.w -= self.velocity
        else:
            self.w -= lr * grad
        self.version += 1
        if self.average_window:
            self.w_avg += (self.w - self.w_avg) / min(self.average_window,
                                                      1 + self.version / 10)
        self.staleness.append(s)
        self.updates.append((worker, seq, pulled, s, lr))
        return APPLIED

    def _handle(self, src, tag, msg, serving):
        rec = self.workers[src]
        rec.last_seen = time.monotonic()
        if rec.status == "stalled" and serving:
            rec.status = "running"  # it came back in time
            self._say(f"worker {src} is back")
        if tag == PULL:
            self._reply(src, 0, PARAMS if serving else STOP)
        elif tag == PUSH:
            (worker, seq, pulled), grad = unpack(msg, 3)
            if seq <= rec.last_seq:  # a resend: same answer, never applied twice
                rec.duplicates += 1
                self._reply(src, seq, rec.last_status)
                return
            status = self._apply(src, seq, pulled, grad) if serving else STOP
            rec.last_seq, rec.last_status = seq, status
            if serving:
                self._handled_one()
            if status == APPLIED:
                rec.applied.append(seq)
            elif status == DROPPED:
                rec.dropped += 1
            self._reply(src, seq, status)
        elif tag == BYE:
            (worker, reason), payload = unpack(msg, 2)
            rec.said_bye = True
            rec.status = REASONS[int(reason)]
            if int(reason) == FAILED:
                self._say(f"worker {src} died after {len(rec.applied)} applied updates; its "
                          "remaining slices are not reassigned, the others carry on")
            rec.stats = dict(zip(BYE_STATS, payload.view(np.float64).tolist(), strict=True))
            self.comm.send(pack([0]), src, BYE_ACK)

    def _handled_one(self):
        self.handled += 1
        per = self.pushes_per_epoch
        if self.checkpoint is not None and per and self.handled % per == 0:
            self.checkpoint(self, self.handled // per)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self):
        """(model arrays loaded with W, shared arrays) for a checkpoint."""
        load_flat(self.params, self.w)
        return {"ps_velocity": self.velocity, "ps_w_avg": self.w_avg,
                "ps_version": np.array(self.version), "ps_handled": np.array(self.handled)}

    def load_state(self, shared):
        self.w = flat_params(self.params).copy()
        self.velocity = np.asarray(shared["ps_velocity"], np.float32).copy()
        self.w_avg = np.asarray(shared["ps_w_avg"], np.float32).copy()
        self.version = int(shared["ps_version"])
        self.handled = int(shared["ps_handled"])

    def _say(self, text):
        if self.log is not None:
            self.log(f"[server] {text}")

    def serve(self):
        """Answer pulls and pushes until no worker is running; then drain. Returns a report."""
        t0, bytes0 = time.perf_counter(), self.comm.bytes_sent
        now = time.monotonic()
        for rec in self.workers.values():
            rec.last_seen = now
        poll = min(0.25, self.timeout / 4)
        while any(r.status == "running" for r in self.workers.values()):
            got = self.comm.recv_any(source=ANY_SOURCE, timeout=poll)
            if got is not None:
                self._handle(*got, serving=True)
            now = time.monotonic()
            for rank, rec in self.workers.items():
                if rec.status == "running" and now - rec.last_seen > self.timeout:
                    rec.status = "stalled"
                    rec.stalled_events += 1
                    self._say(f"worker {rank} silent for {self.timeout:g} s: stalled")
        train_seconds = time.perf_counter() - t0
        # Drain: late pushes get STOP, every worker's BYE gets a BYE_ACK.
        deadline = time.monotonic() + self.drain_timeout
        while not all(r.said_bye for r in self.workers.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got = self.comm.recv_any(source=ANY_SOURCE, timeout=min(left, poll))
            if got is not None:
                self._handle(*got, serving=False)
        for rec in self.workers.values():
            if not rec.said_bye:
                rec.status = "lost" if rec.status in ("running", "stalled") else rec.status
        # the run's model: the averaged versions (default) or the last version, self.w
        load_flat(self.params, self.w_avg if self.average_window else self.w)
        return self.report(train_seconds, self.comm.bytes_sent - bytes0)

    def report(self, train_seconds, bytes_sent):
        workers = {}
        for rank, rec in self.workers.items():
            workers[rank] = {"status": rec.status, "updates_applied": len(rec.applied),
                             "updates_dropped": rec.dropped, "duplicates": rec.duplicates,
                             "stalled_events": rec.stalled_events, **rec.stats}
        st = self.staleness
        return {
            "train_seconds": train_seconds,
            "server_bytes_sent": bytes_sent,
            "version": self.version,
            "average_window": self.average_window,
            "updates_applied": len(self.updates),
            "updates_dropped": sum(r.dropped for r in self.workers.values()),
            "duplicates": sum(r.duplicates for r in self.workers.values()),
            "staleness_mean": float(np.mean(st)) if st else None,
            "staleness_max": int(max(st)) if st else None,
            "dead_workers": [r for r, w in workers.items() if w["status"] == "dead"],
            "stalled_workers": [r for r, rec in self.workers.items() if rec.stalled_events],
            "lost_workers": [r for r, w in workers.items() if w["status"] == "lost"],
            "workers": workers,
            "updates": self.updates,
        }


class AsyncWorker:
    def __init__(self, comm, model, batches, server=0, ack_timeout=10.0, retries=3,
                 faults=None, log=None):
        self.comm, self.model, self.batches, self.server = comm, model, batches, server
        self.params = model.parameters()
        self.ack_timeout, self.retries = ack_timeout, retries
        self.faults = faults or Faults()
        self.log = log
        self.version = 0
        self.seq = 0
        self.stats = dict.fromkeys(BYE_STATS, 0.0)
        self.applied_seqs = []  # seqs the server told us it applied

    def _request(self, tag, message, seq):
        """Send, wait for the reply to `seq`; resend on timeout. Returns the status, or
        None when the server never answered."""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["resends"] += 1
            self.comm.send(message, self.server, tag)
            deadline = time.monotonic() + self.ack_timeout
            while (left := deadline - time.monotonic()) > 0:
                got = self.comm.recv_any(source=self.server, tag=REPLY, timeout=left)
                if got is None:
                    break
                (rseq, status, version), w = unpack(got[2], 3)
                if rseq != seq:
                    continue  # a late duplicate reply to an earlier push: already handled
                if status != STOP:
                    load_flat(self.params, w)
                    self.version = int(version)
                return int(status)
        return None

    def train(self, epochs, start_epoch=0):
        rank = self.comm.rank
        t0 = time.perf_counter()
        try:
            reason = self._loop(epochs, start_epoch)
        except Exception:
            self._bye(FAILED, t0)  # best effort: tell the server before dying
            raise
        self._bye(reason, t0)
        return {**self.stats, "reason": REASONS[reason], "applied_seqs": self.applied_seqs,
                "rank": rank}

    def _loop(self, epochs, start_epoch=0):
        rank = self.comm.rank
        if self._request(PULL, pack([rank]), 0) in (None, STOP):
            return GAVE_UP
        step = 0
        for epoch in range(start_epoch, epochs):
            for _, xb, yb, _ in self.batches.epoch(epoch):
                if xb is None:
                    continue
                self.faults.at_step(rank, step)
                loss, correct = compute_gradients(self.model, xb, yb)
                self.seq += 1
                status = self._request(PUSH, pack([rank, self.seq, self.version],
                                                  flat_grad(self.params)), self.seq)
                self.stats["steps"] += 1
                self.stats["pushes"] += 1
                self.stats["loss_sum"] += loss * len(yb)
                self.stats["correct"] += correct
                self.stats["seen"] += len(yb)
                step += 1
                if status is None:
                    return GAVE_UP
                if status == STOP:
                    return STOPPED
                if status == APPLIED:
                    self.stats["applied"] += 1
                    self.applied_seqs.append(self.seq)
                else:
                    self.stats["dropped"] += 1
        return DONE

    def _bye(self, reason, t0):
        self.stats["train_seconds"] = time.perf_counter() - t0
        self.stats["bytes_sent"] = self.comm.bytes_sent
        stats = np.array([self.stats[k] for k in BYE_STATS], dtype=np.float64)
        self.comm.send(pack([self.comm.rank, reason], stats.view(np.float32)), self.server,
                       BYE)
        # Read everything the server still sends us until its BYE_ACK (see module doc).
        deadline = time.monotonic() + self.ack_timeout * (self.retries + 1)
        while (left := deadline - time.monotonic()) > 0:
            got = self.comm.recv_any(source=self.server, timeout=left)
            if got is None or got[1] == BYE_ACK:
                return
