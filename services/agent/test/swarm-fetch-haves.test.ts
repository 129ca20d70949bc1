/**
 * When a download announces its pieces, against a real nats-server and a real piece server:
 * pieces got from a peer are announced in steps (`haveDue`), pieces got from a seed server
 * with the next have batch. A seed sends each piece about once and turns the other askers
 * away to the swarm, so they can get it only once the tracker hears who holds it: announced
 * only every third piece (a 130-piece blob's step), the newest pieces of the agents that got
 * them reached the others late, and on shaped links the swarm trailed the seed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { PieceBuffers } from '@shoal/pieces';
import {
  decodeMessage,
  digestOf,
  pieceHave,
  pieceHaveSubject,
  rangesSize,
  STREAMS,
} from '@shoal/proto';

import { FsContentStore } from '../src/cache/content-store.js';
import { BlobDownload } from '../src/cache/download.js';
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
/** Pieces of the blob: past 64, so that `haveDue` steps by more than one (here three). */
const PIECES = 130;
/** The test's have interval, in ms: short, so the test does not last minutes. */
const HAVE_INTERVAL_MS = 20;
/** How long the holder takes to answer each piece, in ms: longer than a have batch. */
const PIECE_DELAY_MS = 45;

describe('SwarmFetch haves', () => {
  let fixture: JetStreamFixture;
  let root: string;

  before(async () => {
    fixture = await startJetStream([STREAMS.swarm, STREAMS.pieces]);
    root = await mkdtemp(join(tmpdir(), 'shoal-fetch-haves-'));
  });

  after(async () => {
    await fixture.close();
    await rm(root, { recursive: true, force: true });
  });

  /**
   * Downloads a new blob of `PIECES` pieces, one at a time, from a holder the hand-out names
   * a seed server (`seed`) or a peer, and returns the held-piece counts of the haves sent.
   */
  async function havesFrom(seed: boolean, name: string): Promise<number[]> {
    const content = Buffer.alloc(PIECES * PIECE_BYTES, seed ? 3 : 5);
    content.write(name);
    const digest = digestOf(content);
    const blob = digest.toString();
    const self = { id: `agent-haves-${name}`, url: 'http://127.0.0.1:65005' };
    // The holder: the agent's own piece handler, answering each piece after a pause.
    const holder = await servePieces(content, () => delay(PIECE_DELAY_MS));
    assert.equal(await publishHashes(fixture.js, content), PIECES);
    const { nc } = fixture;
    const tracker = answerWantsWith(nc, blob, self.id, { id: 'holder', url: holder.url, seed });
    const heard: Uint8Array[] = [];
    const haves = nc.subscribe(pieceHaveSubject(blob, self.id), {
      callback: (_error, msg) => {
        heard.push(msg.data);
      },
    });
    await nc.flush();
    const { client, logger, metrics } = startSwarmClient(fixture, self, true, HAVE_INTERVAL_MS);
    const store = new FsContentStore(join(root, name), 64 * 1024 * 1024);
    await store.init();
    const pool = new PieceBuffers(PIECE_BYTES);
    const download = new BlobDownload(digest, await store.createTemp(), pool);
    const fetch = swarmFetchNoOrigin(
      download,
      `library/${name}`,
      { client, store, pool, metrics, logger },
      { concurrency: 1, stallTimeoutMs: 10_000, wantIntervalMs: 60_000 },
    );
    try {
      await fetch.run(new AbortController().signal);
      assert.equal(download.state, 'verified', 'the blob came from the holder');
      await client.flushHaves();
      await nc.flush();
      return heard.map((data) => {
        const decoded = decodeMessage(pieceHave, data);
        assert.ok(decoded.ok, 'every have is a valid piece-have');
        return rangesSize(decoded.value.pieces);
      });
    } finally {
      tracker.unsubscribe();
      haves.unsubscribe();
      await client.close();
      await holder.server.close();
    }
  }

  it('announces pieces from a seed with the next batch, pieces from a peer in steps', async () => {
    const fromPeer = await havesFrom(false, 'peer');
    const fromSeed = await havesFrom(true, 'seed');
    // From a peer: 1, 2, then every third piece (`haveDue`), and the whole blob.
    assert.ok(fromPeer.length >= 40 && fromPeer.length <= 48, `peer: ${fromPeer.length} haves`);
    const steps = fromPeer.slice(1).map((count, i) => count - (fromPeer[i] ?? 0));
    assert.ok(
      steps.slice(2, -1).every((step) => step >= 3),
      `peer steps: ${steps.join(',')}`,
    );
    // From a seed: nearly every piece in a have of its own (a batch every 20 ms, a piece
    // every 45 ms or more), never more haves than pieces.
    assert.ok(fromSeed.length >= 0.8 * PIECES, `seed: ${fromSeed.length} haves`);
    assert.ok(fromSeed.length <= PIECES, `seed: ${fromSeed.length} haves`);
    assert.equal(fromSeed.at(-1), PIECES, 'the last have holds every piece');
    assert.equal(fromPeer.at(-1), PIECES, 'the last have holds every piece');
  });
});
