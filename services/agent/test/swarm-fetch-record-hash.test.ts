/**
 * When a download hashes its blob whole while it follows the seed server's signed record,
 * against a real nats-server and a real piece server (issue 9: on a cold pull an agent read
 * back and hashed most of a large layer just before the record came, which then made that
 * hash useless: 96 MiB of a 160 MiB layer).
 *
 * The seed publishes its piece hashes as it reads the blob from the origin, and its record
 * right after the last ones. An agent that has not trusted a record yet (the seeds may sign
 * none) keeps its hash a set distance behind the prefix. Once it has, a download hashes nothing
 * while the seed's list is not whole, however far its prefix runs; the record then comes and
 * vouches for the blob: not a byte hashed. From a seed that signs no record after all, the
 * hash catches up once the list is whole, each byte fed to it once, and the blob is checked
 * by its digest. Three cold pulls by one agent, in order.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import {
  digestOf,
  encodeMessage,
  pieceListDigest,
  piecesVerified,
  piecesVerifiedSubject,
  signPiecesVerified,
  STREAMS,
} from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
import type { AgentMetrics } from '../src/metrics.js';
import { pieceHashList, publishHashes, servePieces } from './blob-pieces.js';
import {
  answerWantsWith,
  startJetStream,
  startSwarmClient,
  swarmFetchNoOrigin,
  type JetStreamFixture,
} from './jetstream-fixture.js';

// The piece size a blob under 64 MiB has (`pieceSizeFor`).
const PIECE_BYTES = 256 * 1024;
const PIECES = 32;
/** Pieces whose hashes the seed has published while it still reads the blob. */
const READ_SO_FAR = 24;
/** The hash's distance behind the prefix once the list is whole (the agent's: 64 MiB). */
const LAG_BYTES = 1024 * 1024;

describe('SwarmFetch whole-blob hash while the seed record is followed', () => {
  let fixture: JetStreamFixture;
  let root: string;
  const keys = generateKeyPairSync('ed25519');
  const self = { id: 'agent-record', url: 'http://127.0.0.1:65005' };
  /** One agent for every pull: whether it has trusted a record carries over. */
  let agent: ReturnType<typeof startSwarmClient>;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-record-'));
    agent = startSwarmClient(fixture, self, false, 200, [keys.publicKey]);
  });

  after(async () => {
    await agent.client.close();
    await fixture.close();
    await rm(root, { recursive: true, force: true });
  });

  /**
   * A cold pull behind a seed server still reading the blob: the seed's hashes go out up to
   * each of `stages` (piece counts) in turn, the download taking those pieces each time, then
   * the seed ends its read (its record, when `signs`, then the last hashes); `beforeStage`
   * runs before each stage past the first. Returns the bytes hashed at the end of each stage
   * and at the end, and the blob checks made meanwhile.
   */
  async function coldPull(
    name: string,
    signs: boolean,
    stages: readonly number[] = [READ_SO_FAR],
    beforeStage?: () => Promise<void>,
  ): Promise<{ hashedAt: number[]; hashed: number; checks: { record: number; digest: number } }> {
    const content = Buffer.alloc(PIECES * PIECE_BYTES, signs ? 7 : 9);
    content.write(name);
    const digest = digestOf(content);
    const blob = digest.toString();
    const holder = await servePieces(content);
    const { nc } = fixture;
    const tracker = answerWantsWith(nc, blob, self.id, { id: 'seed', url: holder.url, seed: true });
    await nc.flush();
    const { client, logger, metrics } = agent;
    const before = {
      record: await checksBy(metrics, 'seed-record'),
      digest: await checksBy(metrics, 'digest'),
    };
    const store = new FsContentStore(join(root, name), 64 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(PIECE_BYTES);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch = swarmFetchNoOrigin(
      download,
      `library/${name}`,
      { client, store, pool, metrics, logger },
      {
        concurrency: 4,
        stallTimeoutMs: 10_000,
        wantIntervalMs: 100,
        recordHashLagBytes: LAG_BYTES,
      },
    );
    const run = fetch.run(new AbortController().signal);
    try {
      const hashedAt: number[] = [];
      let published = 0;
      for (const [i, stage] of stages.entries()) {
        if (i > 0) {
          await beforeStage?.();
        }
        await publishHashes(fixture.js, content, published, stage);
        published = stage;
        // Every piece the seed has hashed so far, held: the prefix is well past the lag.
        const deadline = Date.now() + 10_000;
        while (download.available < stage * PIECE_BYTES && Date.now() < deadline) {
          await delay(10);
        }
        assert.equal(download.available, stage * PIECE_BYTES, 'the pieces hashed so far');
        // Time for a read-back to run, had one started.
        await delay(200);
        hashedAt.push(download.hashedBytes);
      }
      if (signs) {
        const record = signPiecesVerified(keys.privateKey, {
          type: 'pieces-verified',
          blob,
          size: content.length,
          pieceSize: PIECE_BYTES,
          hashes: pieceListDigest(pieceHashList(content)),
        });
        await fixture.js.publish(
          piecesVerifiedSubject(blob),
          encodeMessage(piecesVerified, record),
        );
        // Heard before the last hashes (the seed sends both in one round trip; which one an
        // agent hears first is a race, whose loser hashes until the record comes).
        await delay(100);
      }
      await publishHashes(fixture.js, content, published);
      await run;
      assert.equal(download.state, 'verified');
      const stored = await store.open(digest);
      assert.ok(stored !== undefined, 'the blob is in the store');
      try {
        assert.deepEqual(await stored.handle.readFile(), content, 'the blob, byte for byte');
      } finally {
        await stored.release();
      }
      return {
        hashedAt,
        hashed: download.hashedBytes,
        checks: {
          record: (await checksBy(metrics, 'seed-record')) - before.record,
          digest: (await checksBy(metrics, 'digest')) - before.digest,
        },
      };
    } finally {
      await run.catch(() => undefined);
      tracker.unsubscribe();
      await holder.server.close();
    }
  }

  it('keeps the hash behind the prefix until the agent has trusted a record', async () => {
    // Half the seed's read lagging; then another download trusts a record (its seed signs):
    // the rest of the read, held.
    const pulled = await coldPull('first', true, [READ_SO_FAR / 2, READ_SO_FAR], async () => {
      const other = await coldPull('other', true, []);
      assert.deepEqual(other.checks, { record: 1, digest: 0 });
    });
    const lagging = (READ_SO_FAR / 2) * PIECE_BYTES - LAG_BYTES;
    assert.deepEqual(pulled.hashedAt, [lagging, lagging], 'lagging, then held');
    assert.equal(pulled.hashed, lagging, 'nothing more once the record came');
    assert.deepEqual(pulled.checks, { record: 2, digest: 0 }, 'both by the record');
  });

  /** Makes sure the agent has trusted a record (each test may run alone). */
  async function trustOne(): Promise<void> {
    if (!agent.client.recordsCome) {
      await coldPull('trust', true, []);
    }
    assert.ok(agent.client.recordsCome);
  }

  it('then hashes nothing while the list is partial, nor once the record vouches', async () => {
    await trustOne();
    const pulled = await coldPull('signed', true);
    assert.deepEqual(pulled.hashedAt, [0], 'no byte hashed while the seed was still reading');
    assert.equal(pulled.hashed, 0, 'no byte hashed at all');
    assert.deepEqual(pulled.checks, { record: 1, digest: 0 });
  });

  it('from a seed that signs no record, hashes each byte once after the list is whole', async () => {
    await trustOne();
    const pulled = await coldPull('unsigned', false);
    assert.deepEqual(pulled.hashedAt, [0], 'no byte hashed while the seed was still reading');
    assert.equal(pulled.hashed, PIECES * PIECE_BYTES, 'every byte, once');
    assert.deepEqual(pulled.checks, { record: 0, digest: 1 });
  });
});

/** The agent's blob checks by `by` (`seed-record`, `digest`), from its metrics. */
async function checksBy(metrics: AgentMetrics, by: string): Promise<number> {
  const { values } = await metrics.blobChecks.get();
  return values.find((v) => v.labels.by === by)?.value ?? 0;
}
