import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { PieceClient, PieceFetchError } from '../src/swarm/piece-client.js';
import { RateFloor, watchRateFloor } from '../src/swarm/rate-floor.js';

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance(ms: number): void } {
  let t = 1_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('RateFloor', () => {
  const settings = { graceMs: 15_000, minBytesPerSecond: 16 * 1024 };

  it('never gives up on a request that keeps above the floor, however long it takes', () => {
    const clock = manualClock();
    const floor = new RateFloor(settings, clock.now);
    // 64 MiB at twice the floor: over half an hour, ten times the old fixed 15 s per piece
    // many times over; checked every simulated second.
    for (let second = 0; second < 2048; second++) {
      clock.advance(1000);
      floor.record(32 * 1024);
      assert.equal(floor.tooSlow(), false, `too slow at ${second} s`);
    }
    assert.equal(floor.received, 64 * 1024 * 1024);
  });

  it('allows the grace for connecting and waiting for the server turn', () => {
    const clock = manualClock();
    const floor = new RateFloor(settings, clock.now);
    clock.advance(14_999);
    assert.equal(floor.tooSlow(), false);
    assert.equal(floor.msUntilTooSlow(), 1);
    clock.advance(1);
    assert.equal(floor.tooSlow(), true);
  });

  it('gives up once the bytes fall below the line, at the moment it predicts', () => {
    const clock = manualClock();
    const floor = new RateFloor(settings, clock.now);
    clock.advance(10_000);
    floor.record(64 * 1024); // four seconds of the floor's bytes
    clock.advance(5_000);
    // Grace 15 s + 4 s paid for: 4 s left.
    assert.equal(floor.msUntilTooSlow(), 4_000);
    clock.advance(3_999);
    assert.equal(floor.tooSlow(), false);
    // A trickle below the floor only delays the end: 1 KiB buys 62.5 ms.
    floor.record(1024);
    assert.equal(floor.msUntilTooSlow(), 63.5);
    clock.advance(63);
    assert.equal(floor.tooSlow(), false);
    clock.advance(1);
    assert.equal(floor.tooSlow(), true);
  });

  it('has no floor at 0 bytes/s', () => {
    const clock = manualClock();
    const floor = new RateFloor({ graceMs: 10, minBytesPerSecond: 0 }, clock.now);
    clock.advance(3_600_000);
    assert.equal(floor.tooSlow(), false);
    assert.equal(floor.msUntilTooSlow(), Number.POSITIVE_INFINITY);
  });
});

describe('watchRateFloor', () => {
  it('aborts with the given error once the request is too slow, and not before', async () => {
    const floor = new RateFloor({ graceMs: 60, minBytesPerSecond: 1000 });
    const controller = new AbortController();
    const started = Date.now();
    const stop = watchRateFloor(floor, controller, () => new Error('too slow'));
    // 50 bytes buy 50 ms more.
    floor.record(50);
    // The watch's timer does not keep a process alive (a socket does): the sleep does here.
    await Promise.race([
      new Promise((resolve) => controller.signal.addEventListener('abort', resolve)),
      sleep(2_000),
    ]);
    stop();
    assert.ok(Date.now() - started >= 100, `aborted after ${Date.now() - started} ms`);
    assert.equal((controller.signal.reason as Error).message, 'too slow');
  });

  it('stops watching when told', async () => {
    const floor = new RateFloor({ graceMs: 20, minBytesPerSecond: 1000 });
    const controller = new AbortController();
    watchRateFloor(floor, controller, () => new Error('too slow'))();
    await sleep(60);
    assert.equal(controller.signal.aborted, false);
  });
});

describe('PieceClient against a slow server', () => {
  const PIECE = Buffer.alloc(8 * 1024, 7);
  const BLOB = `sha256:${'a'.repeat(64)}`;
  let server: Server;
  let base: string;
  /** How the server sends the piece: chunk size and gap between chunks, in ms. */
  let pace = { chunk: 512, gapMs: 50 };

  async function trickle(res: ServerResponse): Promise<void> {
    res.writeHead(200, { 'content-length': PIECE.length });
    for (let at = 0; at < PIECE.length && !res.destroyed; at += pace.chunk) {
      res.write(PIECE.subarray(at, at + pace.chunk));
      await sleep(pace.gapMs);
    }
    res.end();
  }

  before(async () => {
    server = createServer((_req, res) => void trickle(res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('receives a piece that takes four idle timeouts, above the floor', async () => {
    pace = { chunk: 512, gapMs: 50 };
    const client = new PieceClient({ idleTimeoutMs: 200, minRateBytes: 5_000 });
    try {
      const started = Date.now();
      const piece = await client.fetch(base, BLOB, 0, PIECE.length, AbortSignal.timeout(10_000));
      assert.ok(Date.now() - started >= 750, 'the server took its time');
      assert.deepEqual(piece, PIECE);
    } finally {
      client.close();
    }
  });

  it('stops a request at once when the caller aborts, with the caller reason', async () => {
    pace = { chunk: 512, gapMs: 50 };
    const client = new PieceClient({ idleTimeoutMs: 5_000, minRateBytes: 0 });
    try {
      const controller = new AbortController();
      setTimeout(() => controller.abort(new Error('download cancelled')), 100);
      const started = Date.now();
      await assert.rejects(
        client.fetch(base, BLOB, 0, PIECE.length, controller.signal),
        /download cancelled/,
      );
      assert.ok(Date.now() - started < 700, `stopped after ${Date.now() - started} ms`);
    } finally {
      client.close();
    }
  });

  it('gives up on a piece that never goes quiet but stays below the floor', async () => {
    pace = { chunk: 256, gapMs: 100 };
    const client = new PieceClient({ idleTimeoutMs: 200, minRateBytes: 10_000 });
    try {
      const started = Date.now();
      await assert.rejects(
        client.fetch(base, BLOB, 0, PIECE.length, AbortSignal.timeout(10_000)),
        (error: unknown) =>
          error instanceof PieceFetchError &&
          error.code === 'PIECE_TIMEOUT' &&
          /below 10000 bytes\/s/.test(error.message),
      );
      // 2.5 KiB/s against a 10 kB/s floor: given up well before the 3.2 s the piece needs.
      assert.ok(Date.now() - started < 1500, `gave up after ${Date.now() - started} ms`);
    } finally {
      client.close();
    }
  });
});

describe('PieceClient against a source that is gone', () => {
  it('says the source is unreachable when nothing listens at its address', async () => {
    // A port that was just free: a stopped peer or seed server the tracker still names.
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    const client = new PieceClient({ idleTimeoutMs: 1000, minRateBytes: 0 });
    try {
      await assert.rejects(
        client.fetch(
          `http://127.0.0.1:${port}`,
          `sha256:${'b'.repeat(64)}`,
          0,
          1024,
          AbortSignal.timeout(5_000),
        ),
        (error: unknown) =>
          error instanceof PieceFetchError &&
          error.code === 'PIECE_UNREACHABLE' &&
          error.cause instanceof Error &&
          (error.cause as NodeJS.ErrnoException).code === 'ECONNREFUSED',
      );
    } finally {
      client.close();
    }
  });

  it('says the source is unreachable when its name no longer resolves', async () => {
    // A Kubernetes pod's DNS name goes when the pod stops; `.invalid` never resolves. The
    // idle timeout is long enough for a slow resolver to answer first.
    const client = new PieceClient({ idleTimeoutMs: 15_000, minRateBytes: 0 });
    try {
      await assert.rejects(
        client.fetch(
          'http://shoal-seed-gone.invalid:7001',
          `sha256:${'b'.repeat(64)}`,
          0,
          1024,
          AbortSignal.timeout(20_000),
        ),
        (error: unknown) =>
          error instanceof PieceFetchError &&
          error.code === 'PIECE_UNREACHABLE' &&
          /does not resolve/.test(error.message) &&
          error.cause instanceof Error &&
          ['ENOTFOUND', 'EAI_AGAIN'].includes((error.cause as NodeJS.ErrnoException).code ?? ''),
      );
    } finally {
      client.close();
    }
  });
});
