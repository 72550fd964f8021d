/**
 * The pure parts, without a server: the lease's local deadline and its
 * bookkeeping of guards, the checks on options, the commands as sent, the
 * retry schedule, reply checks, the three shapes of LOCK.INFO in RESP2 and
 * RESP3, what a release's reply means, and the watchdog against a scripted
 * transport (deadline from the send, unconfirmed while renewals hang,
 * expired without watchdog, a 0 means not held, no drift of the period).
 */

import assert from "node:assert/strict";
import { test } from "node:test";
import { releaseOutcome } from "../src/client.js";
import {
  InvalidOptionsError,
  LeaseLostError,
  ServerError,
  UnexpectedReplyError,
  WrongTypeError,
} from "../src/errors.js";
import { parseKeyInfo } from "../src/info.js";
import { Lease, type LeaseParams, leaseParams, waitMs } from "../src/lease.js";
import * as proto from "../src/protocol.js";
import { Watchdog, Watched } from "../src/watchdog.js";
import { sleep, waitFor } from "./servers.js";

const params = (ttl = 3000): LeaseParams => leaseParams(ttl, true, undefined, undefined);

test("the deadline is the send time plus the ttl minus the margin", () => {
  const p = leaseParams(3000, true, undefined, 500);
  const lease = new Lease(1n, p, "exclusive", 1000);
  assert.equal(lease.deadline, 3500);
  lease.confirm(2000);
  assert.equal(lease.deadline, 4500);
  assert.equal(lease.confirmedAt, 2000);
  lease.confirm(1500); // a late reply to an older request
  assert.equal(lease.deadline, 4500, "never moves back");
});

test("remaining counts down and is zero once lost or ended", () => {
  const lease = new Lease(1n, params(), "exclusive", 0);
  assert.equal(lease.remaining(1000), 1700);
  assert.equal(lease.remaining(5000), 0);
  lease.lose("unconfirmed");
  assert.equal(lease.remaining(0), 0);
  const ended = new Lease(1n, params(), "exclusive", 0);
  ended.detach("exclusive", 0);
  assert.equal(ended.remaining(0), 0);
});

test("the first loss wins and aborts the signal with its reason", () => {
  const lease = new Lease(1n, params(), "exclusive", 0);
  const heard: unknown[] = [];
  lease.signal.addEventListener("abort", () => heard.push(lease.signal.reason));
  assert.equal(lease.lose("not-held"), true);
  assert.equal(lease.lose("unconfirmed"), false);
  assert.equal(lease.lost, "not-held");
  assert.equal(heard.length, 1);
  assert.ok(heard[0] instanceof LeaseLostError);
  assert.equal(heard[0].reason, "not-held");
});

test("an ended lease is never lost", () => {
  const lease = new Lease(1n, params(), "exclusive", 0);
  assert.deepEqual(lease.detach("exclusive", 0), { last: true, lost: false, count: 1 });
  assert.equal(lease.lose("not-held"), false);
  assert.equal(lease.signal.aborted, false);
});

test("a shared guard under a live exclusive one goes with the last exclusive", () => {
  const lease = new Lease(1n, params(), "exclusive", 0);
  assert.ok(lease.attach("shared", 0));
  assert.ok(lease.attach("exclusive", 0));
  assert.deepEqual(lease.detach("shared", 0), { last: false, lost: false, count: 0 });
  assert.deepEqual(lease.detach("exclusive", 0), { last: false, lost: false, count: 1 });
  assert.deepEqual(lease.detach("exclusive", 0), { last: true, lost: false, count: 2 });
});

test("the exclusive guard going first is the downgrade", () => {
  const lease = new Lease(1n, params(), "exclusive", 0);
  assert.ok(lease.attach("shared", 0));
  assert.deepEqual(lease.detach("exclusive", 0), { last: false, lost: false, count: 1 });
  assert.deepEqual(lease.detach("shared", 0), { last: true, lost: false, count: 1 });
});

test("permit guards release their own permits", () => {
  const lease = new Lease(1n, params(), "permits", 0);
  assert.ok(lease.attach("permits", 0));
  assert.equal(lease.detach("permits", 3).count, 3);
  assert.equal(lease.detach("permits", 2).count, 2);
});

test("options are checked", () => {
  for (const ttl of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 2_592_000_001]) {
    assert.throws(() => leaseParams(ttl, true, undefined, undefined), InvalidOptionsError);
  }
  assert.throws(() => leaseParams(1000, true, 900, 100), InvalidOptionsError, "no time left");
  assert.throws(() => leaseParams(1000, true, 0, undefined), InvalidOptionsError);
  assert.throws(() => leaseParams(1000, true, undefined, 1000), InvalidOptionsError);
  assert.deepEqual(leaseParams(0.5, false, undefined, undefined), {
    ttl: 1,
    watchdog: false,
    renewEvery: 1 / 3,
    safetyMargin: 0.1,
  });
  assert.equal(waitMs(undefined), undefined);
  assert.equal(waitMs(0), undefined);
  assert.equal(waitMs(Number.POSITIVE_INFINITY), 0);
  assert.equal(waitMs(0.2), 1, "0 would mean no limit to the server");
  assert.throws(() => waitMs(-1), InvalidOptionsError);
  assert.throws(() => waitMs(Number.NaN), InvalidOptionsError);
});

test("commands carry their options and an id", () => {
  const ex = { hold: "exclusive", limit: 0, count: 1 } as const;
  assert.deepEqual(proto.acquireArgs("k", "o", 30000, ex, undefined, "acquire-1"), [
    "LOCK.ACQUIRE",
    "k",
    "o",
    "30000",
    "ID",
    "acquire-1",
  ]);
  const shared = { hold: "shared", limit: 0, count: 1 } as const;
  assert.deepEqual(proto.acquireArgs("k", "o", 10, shared, 0, "acquire-2"), [
    "LOCK.ACQUIRE",
    "k",
    "o",
    "10",
    "SHARED",
    "WAIT",
    "0",
    "ID",
    "acquire-2",
  ]);
  const permits = { hold: "permits", limit: 5, count: 2 } as const;
  assert.deepEqual(proto.acquireArgs("k", "o", 10, permits, 250, "acquire-3"), [
    "LOCK.ACQUIRE",
    "k",
    "o",
    "10",
    "LIMIT",
    "5",
    "COUNT",
    "2",
    "WAIT",
    "250",
    "ID",
    "acquire-3",
  ]);
  assert.deepEqual(proto.releaseArgs("k", "o", 1, "release-1"), [
    "LOCK.RELEASE",
    "k",
    "o",
    "ID",
    "release-1",
  ]);
  assert.deepEqual(proto.releaseArgs("k", "o", 3, "release-2"), [
    "LOCK.RELEASE",
    "k",
    "o",
    "COUNT",
    "3",
    "ID",
    "release-2",
  ]);
  assert.deepEqual(proto.renewArgs("k", "o", 10), ["LOCK.RENEW", "k", "o", "10"]);
  assert.deepEqual(proto.forceReleaseArgs("k", undefined), ["LOCK.FORCERELEASE", "k"]);
});

test("retries back off and stop at the end of the window", () => {
  const conn = new proto.ConnectionError("reset");
  const r = new proto.Retries(100, 0);
  assert.equal(r.retried, false);
  assert.equal(r.pause(conn, 0), 10);
  assert.equal(r.pause(conn, 10), 20);
  assert.equal(r.pause(conn, 30), 40);
  assert.equal(r.pause(conn, 90), 10, "no later than the window's end");
  assert.equal(r.pause(conn, 100), undefined);
  assert.equal(r.retried, true);
  assert.equal(new proto.Retries(100, 0).pause(new ServerError("ERR syntax"), 0), undefined);
  assert.equal(new proto.Retries(100, 0).pause(new ServerError("LOADING busy"), 0), 10);
  const forever = new proto.Retries(undefined, 0);
  for (let i = 0; i < 20; i++) forever.pause(conn, 1e9);
  assert.equal(forever.pause(conn, 1e12), 1000, "capped, and never stops");
  assert.equal(proto.retryWindow(30000, undefined), 30000);
  assert.equal(proto.retryWindow(1000, 5000), 5000);
  assert.equal(proto.retryWindow(1000, 0), undefined);
});

test("a waiting retry sends the wait that is left", () => {
  assert.equal(proto.waitMsLeft(1000, 0, 400), 600);
  assert.equal(proto.waitMsLeft(1000, 0, 2000), 1, "at least 1 ms: 0 would wait forever");
  assert.equal(proto.waitMsLeft(0, 0, 2000), 0);
  assert.equal(proto.waitMsLeft(undefined, 0, 2000), undefined);
});

test("server errors keep the server's message", () => {
  const e = ServerError.of(
    "WRONGTYPE the key holds a semaphore of 4 permits: acquire it with LIMIT 4",
  );
  assert.ok(e instanceof WrongTypeError);
  assert.equal(e.code, "WRONGTYPE");
  assert.equal(
    e.message,
    "WRONGTYPE the key holds a semaphore of 4 permits: acquire it with LIMIT 4",
  );
  const over = ServerError.of("ERR COUNT is more than the owner holds (2); nothing changed");
  assert.equal(proto.heldInOverCount(over), 2);
  assert.equal(proto.heldInOverCount(ServerError.of("ERR other")), undefined);
  assert.ok(proto.isUpgrade(ServerError.of("ERR the owner holds this lock shared: upgrading ...")));
});

test("info of every shape in RESP2 and RESP3", () => {
  const big = "1883421011795247104";
  const exclusive = [
    "owner",
    "o",
    "holds",
    "2",
    "ttl",
    "900",
    "token",
    big,
    "waiters",
    "1",
    "mode",
    "exclusive",
  ];
  const want = {
    mode: "exclusive",
    owner: "o",
    holds: 2,
    ttl: 900,
    token: 1883421011795247104n,
    waiters: 1,
  };
  assert.deepEqual(parseKeyInfo(exclusive), want);
  const asMap = Object.fromEntries(
    Array.from({ length: exclusive.length / 2 }, (_, i) => [
      exclusive[2 * i],
      exclusive[2 * i + 1],
    ]),
  );
  assert.deepEqual(parseKeyInfo(asMap), want);
  assert.deepEqual(parseKeyInfo(new Map(Object.entries(asMap))), want);
  const shared = {
    mode: "shared",
    waiters: "0",
    holders: [
      ["owner", "a", "holds", "1", "ttl", "5", "token", "7"],
      { owner: "b", holds: "2", ttl: "6", token: "8" },
    ],
  };
  assert.deepEqual(parseKeyInfo(shared), {
    mode: "shared",
    waiters: 0,
    holders: [
      { owner: "a", holds: 1, ttl: 5, token: 7n },
      { owner: "b", holds: 2, ttl: 6, token: 8n },
    ],
  });
  const sem = [
    "mode",
    "semaphore",
    "limit",
    "4",
    "available",
    "1",
    "waiters",
    "0",
    "holders",
    [["owner", "a", "permits", "3", "ttl", "5", "token", "9"]],
  ];
  assert.deepEqual(parseKeyInfo(sem), {
    mode: "semaphore",
    limit: 4,
    available: 1,
    waiters: 0,
    holders: [{ owner: "a", permits: 3, ttl: 5, token: 9n }],
  });
  assert.equal(parseKeyInfo(null), null);
  assert.throws(() => parseKeyInfo(["mode", "other"]), UnexpectedReplyError);
  assert.throws(() => parseKeyInfo(["owner", "o"]), UnexpectedReplyError);
});

test("replies are checked", () => {
  assert.equal(proto.token("9223372036854775807"), 9223372036854775807n, "exact above 2^53");
  assert.equal(proto.token(null), null);
  for (const bad of ["0", "-1", "x", 1.5, true]) {
    assert.throws(() => proto.token(bad), UnexpectedReplyError);
  }
  assert.equal(proto.remaining("0"), 0);
  assert.equal(proto.remaining(null), null);
  assert.equal(proto.flag("LOCK.RENEW", "1"), true);
  assert.equal(proto.flag("LOCK.RENEW", "0"), false);
  assert.throws(() => proto.flag("LOCK.RENEW", "2"), UnexpectedReplyError);
});

test("what a release's reply means", () => {
  const lease = () => new Lease(1n, params(), "exclusive", performance.now());
  // A retried last release answered nil was done by its first attempt.
  const held = lease();
  const now = performance.now();
  assert.equal(
    releaseOutcome(held, true, { remaining: null, retried: true, firstSent: now }).held,
    true,
  );
  assert.equal(held.lost, undefined);
  // Not retried, or sent after the local deadline: it was not held.
  const gone = lease();
  assert.equal(
    releaseOutcome(gone, false, { remaining: null, retried: false, firstSent: 0 }).held,
    false,
  );
  assert.equal(gone.lost, "not-held");
  const late = lease();
  const out = releaseOutcome(late, true, {
    remaining: null,
    retried: true,
    firstSent: late.deadline + 1,
  });
  assert.equal(out.held, false);
  // The last guard clears what the server still counts.
  assert.equal(
    releaseOutcome(lease(), true, { remaining: 2, retried: false, firstSent: 0 }).clear,
    2,
  );
  // A guard that is not the last, answered 0: the other guards lost it.
  const others = lease();
  assert.equal(
    releaseOutcome(others, false, { remaining: 0, retried: false, firstSent: 0 }).held,
    true,
  );
  assert.equal(others.lost, "not-held");
});

/** Answers renewals after `delay` ms with `answer`; records send times. */
class Scripted {
  calls: number[] = [];
  constructor(
    readonly delay: number,
    readonly answer: string,
  ) {}

  async batch(commands: readonly unknown[], timeout: number): Promise<unknown[]> {
    this.calls.push(performance.now());
    await sleep(Math.min(this.delay, timeout));
    if (this.delay > timeout) return commands.map(() => new proto.ConnectionError("timeout"));
    return commands.map(() => this.answer);
  }
}

function watched(ttl: number, watchdog = true): Watched {
  const lease = new Lease(
    1n,
    leaseParams(ttl, watchdog, undefined, undefined),
    "exclusive",
    performance.now(),
  );
  return new Watched(lease, "k", "o");
}

test("the watchdog counts the deadline from the send, not the reply", async () => {
  const transport = new Scripted(150, "1");
  const dog = new Watchdog(transport);
  const w = watched(1500);
  dog.watch(w);
  try {
    await waitFor("a confirmed renewal", () => dog.renewals >= 1);
    const firstSend = transport.calls[0] ?? 0;
    assert.ok(w.lease.confirmedAt <= firstSend + 1, "the send time, not the reply's 150 ms later");
    assert.equal(w.lease.deadline, w.lease.confirmedAt + 1350);
  } finally {
    dog.close();
  }
});

test("the watchdog reports unconfirmed at the local deadline while renewals hang", async () => {
  const transport = new Scripted(60_000, "1"); // never answers in time
  const dog = new Watchdog(transport);
  const w = watched(600);
  const deadline = w.lease.deadline;
  dog.watch(w);
  try {
    await waitFor("lost", () => w.lease.signal.aborted);
    assert.equal(w.lease.lost, "unconfirmed");
    assert.ok(performance.now() >= deadline, "never before the deadline");
    assert.ok(transport.calls.length >= 1);
  } finally {
    dog.close();
  }
});

test("with the watchdog off the lease expires at the deadline without renewing", async () => {
  const transport = new Scripted(0, "1");
  const dog = new Watchdog(transport);
  const w = watched(300, false);
  dog.watch(w);
  try {
    await waitFor("lost", () => w.lease.signal.aborted);
    assert.equal(w.lease.lost, "expired");
    assert.deepEqual(transport.calls, []);
  } finally {
    dog.close();
  }
});

test("a renewal answered 0 means not held and stops the renewals", async () => {
  const transport = new Scripted(0, "0");
  const dog = new Watchdog(transport);
  const w = watched(600);
  dog.watch(w);
  try {
    await waitFor("lost", () => w.lease.signal.aborted);
    assert.equal(w.lease.lost, "not-held");
    const calls = transport.calls.length;
    await sleep(500);
    assert.equal(transport.calls.length, calls, "the watchdog stopped after the 0");
  } finally {
    dog.close();
  }
});

test("the next renewal is due a period after the last one was due", () => {
  const w = watched(3000); // renew every 1000 ms
  w.due = 10_000;
  assert.equal(w.nextDue(10_200), 11_000, "sent late: no drift");
  assert.equal(w.nextDue(9_950), 10_950, "sent early: from the send");
  assert.equal(w.nextDue(10_800), 11_300, "far behind: half a period");
});
