/**
 * A download and the seed server's intake notices, against a real nats-server and a real piece
 * server: once it holds every piece the seed has hashed, the bytes the seed says it keeps
 * taking in hold its stall timeout off (a slow origin must not send it to the origin beside
 * the seed), and so does the seed's wait on an origin slow to answer, before any piece or for
 * the rest of a transfer that broke off; a
 * download still missing a piece the seed has (it cannot reach the seed) is not held by them,
 * and stalls as before, nor is one whose seed has waited longer than its timeouts allow. The
 * origin is unreachable: a download sent there fails.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import {
  digestOf,
  encodeMessage,
  SEED_WAIT_NOTICE_MAX_MS,
  seedIntake,
  seedIntakeSubject,
  STREAMS,
} from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import type { SwarmFetch } from '../src/swarm/swarm-fetch.js';
import { publishHashes, servePieces } from './blob-pieces.js';
import {
  answerWantsWith,
  startJetStream,
  startSwarmClient,
  swarmFetchNoOrigin,
  type JetStreamFixture,
} from './jetstream-fixture.js';

// The piece size a blob under 64 MiB has (`pieceSizeFor`).
const PIECE_BYTES = 256 * 1024;
const PIECES = 8;
/** Pieces the seed has hashed when its origin slows down. */
const HASHED = 4;
const STALL_TIMEOUT_MS = 1_000;
/** How often the seed tells of its intake here, and how much came in meanwhile. */
const NOTICE_MS = 150;
const NOTICE_BYTES = 16 * 1024;
/** Where the seed's transfer broke off, past the pieces it hashed. */
const BROKE_AT = HASHED * PIECE_BYTES + 1234;

describe('SwarmFetch and the seed\u2019s intake notices', () => {
  let fixture: JetStreamFixture;
  let root: string;
  const self = { id: 'agent-intake', url: 'http://127.0.0.1:65005' };
  let agent: ReturnType<typeof startSwarmClient>;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-intake-'));
    agent = startSwarmClient(fixture, self, false);
  });

  after(async () => {
    await agent.client.close();
    await fixture.close();
    await rm(root, { recursive: true, force: true });
  });

  const stalls = async (): Promise<number> =>
    (await agent.metrics.swarmFallbacks.get()).values.find((v) => v.labels.reason === 'stall')
      ?.value ?? 0;

  /**
   * The pull is still in the swarm with no stall; once the seed's pieces from `from` on land,
   * it verifies, still with none.
   */
  async function heldUntilPieces(
    pull: { content: Buffer; download: BlobDownload; run: Promise<void> },
    stalledBefore: number,
    from: number,
  ): Promise<void> {
    assert.equal(pull.download.state, 'running', 'still in the swarm');
    assert.equal(await stalls(), stalledBefore, 'no stall');
    await publishHashes(fixture.js, pull.content, from);
    await pull.run;
    assert.equal(pull.download.state, 'verified');
    assert.equal(await stalls(), stalledBefore);
  }

  /** The pull stalled to the (unreachable) origin well before the notices ended. */
  async function stalledAnyway(
    pull: { download: BlobDownload; run: Promise<void> },
    stalledBefore: number,
    started: number,
  ): Promise<void> {
    await pull.run;
    const took = Date.now() - started;
    assert.equal(pull.download.state, 'failed', 'sent to the (unreachable) origin');
    assert.equal(await stalls(), stalledBefore + 1, 'by a stall');
    assert.ok(took < 10 * STALL_TIMEOUT_MS, `stalled in ${String(took)} ms, notices or not`);
  }

  /**
   * A cold pull whose seed (at `seedUrl`, or a piece server of the blob) has hashed `HASHED`
   * pieces and then takes bytes in without landing a piece: notices every `NOTICE_MS` for
   * `noticesMs`, meanwhile `during` runs. With `waited` the notices tell instead of the
   * seed's wait on its source (`waited(ms since the notices began)`), for the blob's first
   * byte (nothing hashed) unless `resumed`: the rest of a transfer that broke off after the
   * `HASHED` pieces. Returns the content, the download, its run and a function that ends the
   * pull's fixtures.
   */
  async function slowIntake(
    name: string,
    seedUrl: string | undefined,
    noticesMs: number,
    during: (download: BlobDownload) => Promise<void>,
    waited?: (elapsedMs: number) => { readonly received: number; readonly waitingMs: number },
    resumed = false,
  ): Promise<{
    content: Buffer;
    download: BlobDownload;
    run: Promise<void>;
    end(): Promise<void>;
  }> {
    const content = Buffer.alloc(PIECES * PIECE_BYTES, 3);
    content.write(name);
    const digest = digestOf(content);
    const blob = digest.toString();
    const holder = seedUrl === undefined ? await servePieces(content) : undefined;
    const { nc } = fixture;
    // The seed, named as holding the whole blob: it is asked for each piece once hashed.
    const tracker = answerWantsWith(nc, blob, self.id, {
      id: 'seed',
      url: seedUrl ?? holder?.url ?? '',
      seed: true,
    });
    await nc.flush();
    const { client, logger, metrics } = agent;
    const store = new FsContentStore(join(root, name), 64 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(PIECE_BYTES);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch: SwarmFetch = swarmFetchNoOrigin(
      download,
      `library/${name}`,
      { client, store, pool, metrics, logger },
      { concurrency: 4, stallTimeoutMs: STALL_TIMEOUT_MS, wantIntervalMs: 100 },
    );
    const run = fetch.run(new AbortController().signal);
    if (waited === undefined || resumed) {
      await publishHashes(fixture.js, content, 0, HASHED);
    }
    // The seed's origin slows down: bytes keep coming, no piece lands; or it has not answered.
    const notices = (async () => {
      let received = HASHED * PIECE_BYTES;
      const started = Date.now();
      const until = started + noticesMs;
      while (Date.now() < until && download.state === 'running') {
        await delay(NOTICE_MS);
        received += NOTICE_BYTES;
        const wait = waited?.(Date.now() - started);
        const state =
          wait === undefined
            ? { size: content.length, received }
            : { ...(wait.received > 0 ? { size: content.length } : {}), ...wait };
        nc.publish(
          seedIntakeSubject(blob),
          encodeMessage(seedIntake, { type: 'seed-intake', blob, seed: 'seed', ...state }),
        );
      }
    })();
    await during(download);
    await notices;
    return {
      content,
      download,
      run,
      end: async () => {
        await run.catch(() => undefined);
        tracker.unsubscribe();
        await holder?.server.close();
      },
    };
  }

  it('waits on a slow seed past its stall timeout while the seed tells of bytes coming in', async () => {
    const stalledBefore = await stalls();
    const pull = await slowIntake(
      'slow-seed',
      undefined,
      6 * STALL_TIMEOUT_MS,
      async (download) => {
        const deadline = Date.now() + 10_000;
        while (download.available < HASHED * PIECE_BYTES && Date.now() < deadline) {
          await delay(10);
        }
        assert.equal(download.available, HASHED * PIECE_BYTES, 'every piece the seed hashed');
      },
    );
    try {
      // Six stall timeouts with every hashed piece held and nothing else to fetch; then the
      // seed's next pieces land.
      await heldUntilPieces(pull, stalledBefore, HASHED);
    } finally {
      await pull.end();
    }
  });

  it('waits past its stall timeout while the seed waits on an origin slow to answer', async () => {
    const stalledBefore = await stalls();
    const pull = await slowIntake(
      'slow-answer',
      undefined,
      4 * STALL_TIMEOUT_MS,
      async (download) => {
        await delay(4 * STALL_TIMEOUT_MS);
        assert.equal(download.available, 0, 'nothing hashed, nothing held');
      },
      (elapsedMs) => ({ received: 0, waitingMs: elapsedMs }),
    );
    try {
      // Then the origin answers: the seed's pieces land.
      await heldUntilPieces(pull, stalledBefore, 0);
    } finally {
      await pull.end();
    }
  });

  it('waits past its stall timeout while the seed asks its origin again for the rest of a transfer that broke off', async () => {
    const stalledBefore = await stalls();
    const pull = await slowIntake(
      'slow-resume',
      undefined,
      4 * STALL_TIMEOUT_MS,
      async (download) => {
        await delay(4 * STALL_TIMEOUT_MS);
        assert.equal(download.available, HASHED * PIECE_BYTES, 'every piece the seed hashed');
      },
      (elapsedMs) => ({ received: BROKE_AT, waitingMs: elapsedMs }),
      true,
    );
    try {
      // Then the origin answers the resume request: the seed's next pieces land.
      await heldUntilPieces(pull, stalledBefore, HASHED);
    } finally {
      await pull.end();
    }
  });

  it('is not held by a wait for the rest longer than agents count (SEED_WAIT_NOTICE_MAX_MS)', async () => {
    const stalledBefore = await stalls();
    const started = Date.now();
    const pull = await slowIntake(
      'endless-resume',
      undefined,
      10 * STALL_TIMEOUT_MS,
      () => Promise.resolve(),
      (elapsedMs) => ({ received: BROKE_AT, waitingMs: SEED_WAIT_NOTICE_MAX_MS + 1 + elapsedMs }),
      true,
    );
    try {
      await stalledAnyway(pull, stalledBefore, started);
    } finally {
      await pull.end();
    }
  });

  it("counts the seed's waits together: a wait for the rest after a long one for the first byte holds it for what is left of SEED_WAIT_NOTICE_MAX_MS", async () => {
    const stalledBefore = await stalls();
    const started = Date.now();
    // 55 s waited for the first byte, then (the transfer broke off after the hashed pieces)
    // a new wait from 0: together past the 60 s agents count 5 s into it.
    const firstMs = 55_000;
    const pull = await slowIntake(
      'waits-together',
      undefined,
      10 * STALL_TIMEOUT_MS,
      () => Promise.resolve(),
      (elapsedMs) =>
        elapsedMs < 2 * NOTICE_MS
          ? { received: 0, waitingMs: firstMs }
          : { received: BROKE_AT, waitingMs: elapsedMs },
      true,
    );
    try {
      await stalledAnyway(pull, stalledBefore, started);
      const took = Date.now() - started;
      assert.ok(
        took >= 4 * STALL_TIMEOUT_MS,
        `held while the waits were short enough (${String(took)} ms)`,
      );
    } finally {
      await pull.end();
    }
  });

  it('is not held by a wait longer than agents count (SEED_WAIT_NOTICE_MAX_MS)', async () => {
    const stalledBefore = await stalls();
    const started = Date.now();
    const pull = await slowIntake(
      'endless-wait',
      undefined,
      10 * STALL_TIMEOUT_MS,
      () => Promise.resolve(),
      (elapsedMs) => ({ received: 0, waitingMs: SEED_WAIT_NOTICE_MAX_MS + 1 + elapsedMs }),
    );
    try {
      await stalledAnyway(pull, stalledBefore, started);
    } finally {
      await pull.end();
    }
  });

  it('is not held by them while it misses a piece the seed has (it cannot reach the seed)', async () => {
    const stalledBefore = await stalls();
    const started = Date.now();
    // Nothing listens on port 1: the seed is handed out but unreachable.
    const pull = await slowIntake(
      'unreachable-seed',
      'http://127.0.0.1:1',
      10 * STALL_TIMEOUT_MS,
      () => Promise.resolve(),
    );
    try {
      await stalledAnyway(pull, stalledBefore, started);
    } finally {
      await pull.end();
    }
  });
});
